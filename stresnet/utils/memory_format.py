"""The memory layout a CPU fine-tune may use: channels-last, unless a layer meets a known oneDNN defect.

oneDNN's AVX2 1x1-convolution backward-weights kernel writes past its workspace on a *strided* 1x1 conv whose input
channels (per group) are fewer than its channel block of 8, with NHWC tensors (uxlfoundation/oneDNN#6035, open).
Depending on the machine and the thread count it hangs, segfaults, or returns wrong weight gradients without a word.
Tucker-2 makes exactly such layers: the core of a factorised downsample conv at an input rank below 8. Measured
here (torch 2.14.1, 2 threads): the 32x uniform-rank ResNet-18 (core 4 -> 12, stride 2) hung in 6 of 8 channels-last
fine-tunes and never with contiguous tensors; one thread crashed with heap corruption. Such a model therefore
trains in the contiguous layout, which costs speed and nothing else.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ONEDNN_1X1_BLOCK", "channels_last_blockers", "train_memory_format"]

ONEDNN_1X1_BLOCK = 8  # input channels below this, on a strided 1x1 conv, meet the defect


def channels_last_blockers(model: nn.Module) -> list[str]:
    """The convs of ``model`` that oneDNN's channels-last 1x1 backward-weights kernel mishandles."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
            and m.in_channels // m.groups < ONEDNN_1X1_BLOCK]


def train_memory_format(model: nn.Module, channels_last: bool, device: torch.device
                        ) -> tuple[torch.memory_format, str | None]:
    """The layout to train ``model`` in, and why channels-last was refused (``None`` if it was not).

    Only CPU training is guarded: the defect is in oneDNN's CPU kernel; CUDA convolutions do not use it.
    """
    if not channels_last:
        return torch.contiguous_format, None
    blockers = channels_last_blockers(model) if device.type == "cpu" else []
    if blockers:
        return torch.contiguous_format, (f"channels_last off: {', '.join(blockers)} (strided 1x1 conv, fewer than "
                                         f"{ONEDNN_1X1_BLOCK} input channels) meet oneDNN#6035 in the CPU kernel")
    return torch.channels_last, None
