"""Fast accuracy estimator: the normalised output MSE of each factorised option, on calibration data.

CompressNAS scores an option by the MSE between the decomposed layer's output
and the original layer's output on a calibration batch. Running the
decomposed layer for every candidate rank would cost one forward pass per
option; instead we use that a conv is linear in its input patches:

    || (W - W_r) * X ||^2 = tr( (W - W_r) S (W - W_r)^T ),   S = sum of patch outer products

and that a HOSVD truncation keeps a leading block of the core ``G`` expressed
in the two mode bases. With ``S~`` the patch second-moment matrix rotated into
the input basis, the error of keeping output rank ``a`` and input rank ``b`` is

    err(a, b) = sum_{o < a} t_o(b) + sum_{o >= a} g_o^T S~ g_o,   t_o(b) = g_{o,>=b}^T S~_{>=b,>=b} g_{o,>=b}

and ``t_o(b)`` grows block by block down the input-rank grid, so ONE pass per
layer yields the exact calibration MSE for every (a, b) pair: tied or free
ranks, any grid. Errors are divided by the layer's output energy (``total``)
so layers of different scale are comparable in one objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import decompose as dec
from ..utils.modes import eval_mode

__all__ = ["capture_inputs", "output_grad_moments", "patch_moment", "ErrorTable", "tucker2_error_table", "rank_grid"]


def rank_grid(dim: int, step: int = 8) -> list[int]:
    """Candidate ranks ``step, 2*step, ...`` below ``dim``, plus ``dim`` itself (full rank of that mode)."""
    grid = list(range(step, dim, step))
    return grid + [dim] if dim > 0 else grid


@torch.no_grad()
def capture_inputs(model: nn.Module, names: Iterable[str], images: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
    """Run ``images`` through ``model`` and keep the input of each named module."""
    names = list(names)
    store: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: store[n].append(args[0].detach()))
        for n in names
    ]
    try:
        with eval_mode(model):
            for i in range(0, len(images), batch_size):
                model(images[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items()}


def output_grad_moments(
    model: nn.Module, names: Iterable[str], images: Tensor, labels: Tensor, batch_size: int = 32
) -> dict[str, Tensor]:
    """Per named module, ``sum g g^T`` over samples and positions of the cross-entropy gradient w.r.t. its output.

    This is the (empirical, channel-block) Fisher information of each layer's
    output: it says how much an output error in each direction moves the loss,
    which the plain feature MSE cannot see (e.g. errors the classifier ignores).
    """
    names = list(names)
    moments: dict[str, Tensor] = {}

    def keep_grad(name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            def on_grad(g: Tensor) -> None:
                g = g.detach().transpose(0, 1).reshape(g.shape[1], -1).double()
                moments[name] = moments.get(name, 0) + g @ g.T
            out.register_hook(on_grad)
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep_grad(n)) for n in names]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            for i in range(0, len(images), batch_size):
                x = images[i : i + batch_size].clone().requires_grad_(True)
                F.cross_entropy(model(x), labels[i : i + batch_size], reduction="sum").backward()
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return moments


def patch_moment(conv: nn.Conv2d, x: Tensor, max_patches: int = 16384, seed: int = 0) -> Tensor:
    """Second moment ``sum p p^T`` of the conv's input patches (float64, ``C_in*kh*kw`` square).

    Patches are unfolded with the conv's own geometry; at most ``max_patches``
    (drawn with a fixed seed) are used, scaled back to the full count.
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"patch moments need zero padding given as numbers, got {conv.padding_mode!r} / {conv.padding!r}")
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N * L, C_in * kh * kw)
    total = cols.shape[0]
    if total > max_patches:
        g = torch.Generator().manual_seed(seed)
        cols = cols[torch.randperm(total, generator=g)[:max_patches]]
    cols = cols.float()
    return (cols.T @ cols).double() * (total / cols.shape[0])


@dataclass(frozen=True)
class ErrorTable:
    """Normalised output MSE of Tucker-2 truncations of one layer.

    ``err[a - 1, j]`` is the error of output rank ``a`` (any ``1..C_out``) and
    input rank ``in_grid[j]``; ``err = 0`` at full rank.
    """

    err: np.ndarray
    in_grid: tuple[int, ...]

    def __call__(self, r_out: int, r_in: int) -> float:
        return float(self.err[r_out - 1, self.in_grid.index(r_in)])


def tucker2_error_table(
    bases: dec.ModeBases,
    moment: Tensor,
    in_grid: Sequence[int],
    grad_moment: Tensor | None = None,
    scale: float | None = None,
) -> ErrorTable:
    """The calibration error of every (output rank, input rank on ``in_grid``) truncation, in one pass.

    Without ``grad_moment``: the output MSE normalised by the output energy.
    With it (see :func:`output_grad_moments`): each output channel's squared error
    weighted by the loss-gradient energy along it, times ``scale`` (1 / (images^2 *
    positions) gives the estimated second moment of the per-image loss change):
    a Fisher-weighted, loss-aware version of the same table.
    """
    w = bases.weight  # float64 (C_out, C_in, kh, kw)
    c_out, c_in, kh, kw = w.shape
    kk = kh * kw
    grid = sorted(set(int(b) for b in in_grid))
    if grid[0] < 1 or grid[-1] > c_in:
        raise ValueError(f"input-rank grid {grid} out of range 1..{c_in}")
    # core in the full mode bases, flattened input side ordered (input basis vector, kernel position)
    # heavy products in float32 (errors are compared, not summed to 1e-12), accumulation in float64
    u_out, u_in = bases.u_out.float(), bases.u_in.float()
    g = torch.einsum("oik,oa,ib->abk", w.float().reshape(c_out, c_in, kk), u_out, u_in).reshape(c_out, c_in * kk)
    s = moment.float().reshape(c_in, kk * c_in * kk)
    s = (u_in.T @ s).reshape(c_in * kk * c_in, kk).T.reshape(kk, c_in * kk, c_in) # (l, a k, j)
    s = (s @ u_in).permute(1, 2, 0).reshape(c_in * kk, c_in * kk)  # rows (a, k), cols (b, l)
    full = ((g @ s) * g).sum(1).double()  # each output channel's energy
    total = full.sum().clamp_min(1e-300)
    # tail[o, j] = g_{o,>=b_j}^T S_{>=b_j,>=b_j} g_{o,>=b_j}, grown block by block from the top rank down
    tail = torch.zeros(c_out, len(grid), dtype=torch.float64)
    acc = torch.zeros(c_out, dtype=torch.float64)
    hi = c_in * kk
    for j in range(len(grid) - 1, -1, -1):
        lo = grid[j] * kk
        if lo < hi:
            g_new = g[:, lo:hi]
            cross = g[:, hi:] @ s[hi:, lo:hi]
            acc = acc + (g_new * (2 * cross + g_new @ s[lo:hi, lo:hi])).sum(1).double()
        tail[:, j] = acc
        hi = lo
    if grad_moment is not None:
        # the gradient energy along each output basis vector (diagonal in the output basis)
        weight = ((grad_moment.to(bases.u_out) @ bases.u_out) * bases.u_out).sum(0)
        tail, full = tail * weight[:, None], full * weight
        total = full.sum()
    # kept output channels o < a lose only their tail; dropped ones lose everything
    err = torch.cumsum(tail, 0) + (total - torch.cumsum(full, 0))[:, None]
    err = err * scale if grad_moment is not None else err / total
    return ErrorTable(err.clamp_min(0).numpy(), tuple(grid))

