"""The fine-tuning hyper-parameters (:class:`TrainConfig`) and the command-line options derived from them.

Every command that trains (``stresnet finetune``, ``admm``, ``lrs``,
``python -m stresnet.train.engine``) gets its training options from
:func:`add_train_options`, so a new field appears in every ``--help`` with its
type, default and help text, and is checked by the same ``__post_init__``.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["TrainConfig", "add_train_options", "train_options", "add_finetune_args"]


# which images of the training folder are fitted (see stresnet.data.split_indices)
TRAIN_ON = ("all", "fit")
BN_MODES = ("train", "frozen")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters. ``batch_size`` is per process (see :mod:`stresnet.train.engine`)."""

    epochs: int = _opt(10, "training epochs")
    lr: float = _opt(0.01, "peak learning rate (after warmup; cosine decay to --min-lr)")
    weight_decay: float = _opt(1e-4, "weight decay")
    batch_size: int = _opt(64, "images per process and step (the global batch is this x processes)")
    input_size: int = _opt(224, "training and evaluation resolution (square)")
    warmup_epochs: float = _opt(1.0, "linear warmup from lr/100, in epochs (fractions allowed)")
    seed: int = _opt(0, "seed of the data order, augmentations and RNGs")
    kd_T: float = _opt(4.0, "distillation temperature")
    kd_alpha: float = _opt(0.5, "weight of the distillation term (0: label-smoothed CE only), in [0, 1]")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy term")
    mixup: float = _opt(0.0, "timm Mixup/CutMix alpha (0: off): teacher and student see the same mixed image, so a "
                             "distillation on few classes also matches the teacher on content between them")
    optimizer: str = _opt("sgd", "timm optimizer name: sgd (Nesterov momentum), momentum (plain), adamw, ...")
    amp: bool | None = _opt(None, "mixed precision (default: on when training on CUDA; bf16 if supported)")
    channels_last: bool = _opt(False, "channels-last memory format")
    workers: int = _opt(1, "data-loader worker processes")
    log_every: int = _opt(50, "steps between progress updates")
    max_steps_per_epoch: int | None = _opt(None, "cap on optimizer updates per epoch (quick runs, tests)")
    eval_every: int = _opt(1, "evaluate every N epochs (and always after the last)")
    min_lr: float = _opt(0.0, "learning rate at the end of the cosine")
    momentum: float = _opt(0.9, "SGD momentum")
    sync_bn: bool = _opt(False, "SyncBatchNorm under DDP (CUDA only)")
    train_on: str = _opt("all", "images of the training folder to fit: all, or fit (without the selection split "
                                "and ILSVRC2012_val_* files; then the selection split is scored every evaluation, "
                                "so that hyper-parameters can be chosen without val)")
    bn: str = _opt("train", "BatchNorm while training: train (batch statistics; running statistics re-estimated) or "
                            "frozen (running statistics used and kept; scale and shift still learn). A decomposed "
                            "start carries its base's statistics, and re-estimating them costs accuracy before any "
                            "weight moves (measured on milli searched: selection top-1 from 98.9 to 86.9)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "input_size", "log_every", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.mixup < 0:
            raise ValueError(f"TrainConfig.mixup must be >= 0, got {self.mixup!r}")
        if self.mixup > 0 and self.batch_size % 2:  # timm's Mixup pairs each batch with its reverse
            raise ValueError(f"TrainConfig.mixup needs an even batch_size, got {self.batch_size!r}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"TrainConfig.kd_alpha must be in [0, 1], got {self.kd_alpha!r}")
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"TrainConfig.train_on must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")
        if self.bn not in BN_MODES:
            raise ValueError(f"TrainConfig.bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"TrainConfig.max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch!r}")


def _selected(only: Iterable[str] | None, exclude: Iterable[str]) -> list[dataclasses.Field]:
    fields = dataclasses.fields(TrainConfig)
    names = {f.name for f in fields}
    wanted = set(names if only is None else only) - set(exclude)
    unknown = sorted(wanted - names)
    if unknown:
        raise ValueError(f"TrainConfig has no field {unknown[0]!r}")
    return [f for f in fields if f.name in wanted]


def _base_type(hint: Any) -> type:
    """The value type of a field's annotation: ``int | None`` -> ``int``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_train_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, prefix: str = "",
                      defaults: Mapping[str, Any] | None = None, only: Iterable[str] | None = None,
                      exclude: Iterable[str] = ()) -> None:
    """One ``--<prefix><field>`` option per :class:`TrainConfig` field (``_`` written ``-``).

    Type, default and help come from the field (``bool`` fields take
    ``--x / --no-x``); ``defaults`` overrides a field's default for this
    command; ``only`` / ``exclude`` pick the fields. The option's ``dest`` is
    ``<prefix><field>``; read the values back with :func:`train_options`.
    """
    defaults = dict(defaults or {})
    hints = typing.get_type_hints(TrainConfig)
    for f in _selected(only, exclude):
        kind = _base_type(hints[f.name])
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = defaults.get(f.name, f.default)
        text = f.metadata.get("help", "") + ("" if default is None else " (default: %(default)s)")
        if kind is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=text)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=kind, default=default, metavar=kind.__name__.upper(),
                                help=text)


def train_options(args: argparse.Namespace, *, prefix: str = "", only: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{field: value}`` of the options :func:`add_train_options` added with the same ``prefix`` / ``only`` / ``exclude``."""
    return {f.name: getattr(args, prefix + f.name) for f in _selected(only, exclude)}


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    """The options of a fine-tune run: data, base, plan, output, and every :class:`TrainConfig` field.

    Shared by ``stresnet finetune`` and ``python -m stresnet.train.engine`` (the
    module form is what ``torchrun -m`` launches).
    """
    p.add_argument("--train", type=Path, required=True, help="ImageFolder of training images")
    p.add_argument("--val", type=Path, required=True, help="ImageFolder of validation images")
    p.add_argument("--out", type=Path, required=True, help="output folder (metrics.jsonl, last.pt, model.safetensors)")
    p.add_argument("--model", required=True, help="base: timm name, stresnet_<variant> or plan JSON")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--plan", type=Path, default=None, help="plan to decompose the base with (student)")
    p.add_argument("--checkpoint", type=Path, default=None, help="base weights (safetensors)")
    p.add_argument("--no-teacher", action="store_true", help="plain fine-tuning (label-smoothed CE only)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when present")
    p.add_argument("--no-progress", action="store_true")
    add_train_options(p.add_argument_group("training options (TrainConfig)"))
