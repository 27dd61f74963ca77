"""Fine-tune a compressed student with knowledge distillation from its uncompressed base.

Single process (``stresnet finetune ...``, ``python -m stresnet.train.engine ...``
or :func:`finetune`) or DDP under ``torchrun --nproc_per_node=N -m
stresnet.train.engine ...``; both command lines take the same options
(:func:`stresnet.train.config.add_finetune_args`: one per :class:`TrainConfig`
field).

Semantics worth knowing:

* ``batch_size`` is **per process**: under DDP the global batch is
  ``batch_size * world_size`` (gradients are averaged over ranks), and the
  learning rate is used as given (not rescaled). To reproduce a
  single-process run with ``N`` processes, divide ``batch_size`` by ``N``.
* The learning rate follows timm's :class:`CosineLRScheduler` stepped **per
  optimizer update**: linear warmup from ``lr * 0.01`` over
  ``warmup_epochs * steps_per_epoch`` updates, then a cosine from ``lr`` to
  ``min_lr`` ending at the last update. ``metrics.jsonl`` logs the lr of each
  epoch's last update.
* Determinism: data order and augmentation depend on ``(seed, epoch)`` only
  (see :mod:`stresnet.train.data`); the global RNGs are seeded from ``seed``
  (+ rank) at the start of a fresh run and their states (torch, numpy, python,
  CUDA; per rank) are checkpointed. On CPU a run resumed from ``last.pt`` ends
  with bitwise the same weights and metrics as an uninterrupted one; on GPU up
  to cuDNN's non-deterministic kernels.
* Each epoch: train, evaluate top-1/top-5 on ``val_dir`` (every rank
  evaluates a shard, correct counts are summed), append one line to
  ``metrics.jsonl``, then atomically replace ``last.pt`` (write ``.tmp``, fsync,
  ``os.replace``). A kill at any moment loses at most the epoch in flight:
  on resume ``metrics.jsonl`` is rewritten from the checkpoint, so each epoch
  appears once. At the end ``model.safetensors`` holds the student's
  state dict. Only rank 0 writes files.
* BatchNorm under DDP uses per-rank batch statistics (rank 0's running
  statistics are broadcast before each evaluation and checkpoint);
  ``sync_bn=True`` switches to :class:`~torch.nn.SyncBatchNorm`, which
  PyTorch supports on GPUs only.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from timm.utils import random_seed
from tqdm import tqdm

from ..utils.distributed import all_reduce_sum, broadcast_buffers, cleanup_distributed, dist_info, setup_distributed
from ..utils.memory_format import train_memory_format
from ..utils.metrics import TopK
from ..utils.modes import eval_mode, freeze_bn_statistics
from .config import TrainConfig, add_finetune_args, train_options
from .data import TrainLoader, val_loader
from .distill import kd_loss

__all__ = ["TrainConfig", "TrainHook", "finetune", "build_models", "add_finetune_args", "finetune_config", "run_finetune", "main"]

log = logging.getLogger("stresnet.train")

CKPT_FORMAT = "stresnet-train/1"
# config fields that change the training trajectory: resuming with other values
# warns and rebuilds the LR schedule from the new config.
_TRAJECTORY = ("epochs", "lr", "min_lr", "weight_decay", "momentum", "batch_size", "input_size", "warmup_epochs",
               "seed", "kd_T", "kd_alpha", "label_smoothing", "optimizer", "max_steps_per_epoch", "train_on", "mixup")
# test hook: seconds to sleep after each optimizer step (makes kill -9 tests deterministic)
_STEP_SLEEP_ENV = "STRESNET_TRAIN_STEP_SLEEP"


class TrainHook:
    """Extension point for methods that change training (ADMM, sparsity schedules): override what you need.

    Hooks run on every rank in the same order. ``state_dict`` goes into each
    checkpoint so that a resumed run continues with the hook's state (ADMM's
    ``Z`` and ``U``, for instance); masks and other module buffers are saved
    with the model already.
    """

    def on_train_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        """Called once (fresh or resumed run) before the first epoch that runs."""

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called before each epoch's first step (``epoch`` counts from 0)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss of each step (``None``: nothing)."""
        return None

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer update; ``step`` is the global update count (from 1)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


# ----------------------------------------------------------------------------- RNG state

def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- files

def _fsync_write(path: Path, write) -> None:
    """Write via ``write(file)`` to ``path.tmp``, fsync, then atomically replace ``path``."""
    from ..utils.io import atomic_write

    atomic_write(path, write, fsync=True)


def _write_metrics(path: Path, metrics: list[dict]) -> None:
    _fsync_write(path, lambda f: f.write("".join(json.dumps(m) + "\n" for m in metrics).encode()))


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _save_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})
    _fsync_write(path, lambda f: f.write(blob))


def _load_checkpoint(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"checkpoint {path}: not a {CKPT_FORMAT} training checkpoint")
    return ckpt


# ----------------------------------------------------------------------------- train / eval

def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def _evaluate(model: nn.Module, loader, device: torch.device, amp_dtype,
              memory_format: torch.memory_format) -> tuple[float, float]:
    acc = TopK()
    with eval_mode(model):
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                out = model(x)
            acc.update(out, y)
    c1, c5, n = all_reduce_sum(acc.counts(), device)
    return c1 / max(n, 1), c5 / max(n, 1)


def finetune(student: nn.Module, teacher: nn.Module | None, train_dir: str | Path, val_dir: str | Path,
             out_dir: str | Path, cfg: TrainConfig, resume: bool = False, progress: bool = True, *,
             stop_after_epoch: int | None = None, hooks: list[TrainHook] | tuple[TrainHook, ...] = ()) -> dict:
    """Fine-tune ``student`` (in place) with KD from ``teacher`` on an ImageFolder; see the module docstring.

    ``resume=True`` continues from ``out_dir/last.pt`` when it exists (else
    starts fresh). ``stop_after_epoch=k`` returns after epoch ``k`` has been
    checkpointed (for time-limited jobs; resume later with the same config).
    ``hooks`` (:class:`TrainHook`) add loss terms or act between steps.
    Returns ``{"val_top1", "val_top5", "epochs", "seconds", "metrics",
    "finished", "world_size", "out_dir"}`` (accuracies as fractions; seconds
    summed over the epochs of every run that contributed).
    """
    out_dir = Path(out_dir)
    device, own_pg = setup_distributed()
    rank, world = dist_info()
    try:
        return _finetune(student, teacher, train_dir, val_dir, out_dir, cfg, resume, progress and rank == 0,
                         stop_after_epoch, device, rank, world, tuple(hooks))
    finally:
        cleanup_distributed(own_pg)


def _finetune(student, teacher, train_dir, val_dir, out_dir: Path, cfg: TrainConfig, resume: bool, progress: bool,
              stop_after_epoch, device: torch.device, rank: int, world: int, hooks: tuple = ()) -> dict:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    main_rank = rank == 0
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out_dir / "last.pt", out_dir / "metrics.jsonl"
    cuda = device.type == "cuda"
    amp = cfg.amp if cfg.amp is not None else cuda
    amp_dtype = None
    if amp and cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    memory_format, refused = train_memory_format(student, cfg.channels_last, device)
    if refused and main_rank:
        log.warning("%s", refused)

    # data
    train = TrainLoader(train_dir, cfg.input_size, cfg.batch_size, seed=cfg.seed, workers=cfg.workers, pin_memory=cuda,
                        part=None if cfg.train_on == "all" else cfg.train_on)
    val = val_loader(val_dir, cfg.input_size, cfg.batch_size, workers=cfg.workers, pin_memory=cuda)
    selection = None if cfg.train_on == "all" else val_loader(train_dir, cfg.input_size, cfg.batch_size,
                                                                workers=cfg.workers, pin_memory=cuda, part="selection")
    steps = len(train) if cfg.max_steps_per_epoch is None else min(len(train), cfg.max_steps_per_epoch)
    total = steps * cfg.epochs
    warmup = min(int(round(cfg.warmup_epochs * steps)), total - 1)

    # models
    student.to(device=device, memory_format=memory_format)
    if cfg.sync_bn and world > 1 and cuda:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    use_teacher = teacher is not None and cfg.kd_alpha > 0
    if use_teacher:
        teacher.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
    optimizer = create_optimizer_v2(student, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    **({"momentum": cfg.momentum} if cfg.optimizer.lower() in ("sgd", "momentum", "nesterov") else {}))

    def make_scheduler():
        return CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=cfg.min_lr, warmup_t=warmup,
                                 warmup_lr_init=cfg.lr * 0.01, warmup_prefix=True, t_in_epochs=False)

    scheduler = make_scheduler()
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # state
    start_epoch, metrics = 0, []
    ckpt = _load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if ckpt is not None:
        student.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        changed = [k for k in _TRAJECTORY if ckpt["config"].get(k) != getattr(cfg, k)]
        if changed:
            log.warning("resuming %s with a different %s: the run will not match an uninterrupted one",
                        ckpt_path, ", ".join(changed))
            scheduler = make_scheduler()
        else:
            scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, metrics = int(ckpt["epoch"]), list(ckpt["metrics"])
        for hook, state in zip(hooks, ckpt.get("hooks", [])):
            hook.load_state_dict(state)
        rngs = ckpt["rng"]
        _set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
        scheduler.step_update(start_epoch * steps)
        if main_rank:
            log.info("resumed from %s at epoch %d/%d", ckpt_path, start_epoch, cfg.epochs)
    else:
        random_seed(cfg.seed, rank)  # timm: python, numpy and torch RNGs from seed + rank
    if main_rank:
        _write_metrics(metrics_path, metrics)  # drop rows of an epoch that was not checkpointed
        if not (resume and ckpt is not None):
            (out_dir / "model.safetensors").unlink(missing_ok=True)
    del ckpt

    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if cuda else None)

    mix = _mixup(student, cfg, device) if cfg.mixup > 0 else None
    step_sleep = float(os.environ.get(_STEP_SLEEP_ENV, "0") or 0)
    last_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    if start_epoch < last_epoch:
        for hook in hooks:
            hook.on_train_start(student, steps, total)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        model.train()
        if cfg.bn == "frozen":
            freeze_bn_statistics(student)
        loss_sum, n_steps, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
        for hook in hooks:
            hook.on_epoch_start(student, epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False,
                   dynamic_ncols=True)
        for i, (x, y) in enumerate(train.epoch(epoch)):
            if i >= steps:
                break
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            smoothing = cfg.label_smoothing
            if mix is not None:  # every batch is full (the loader drops the last partial one), so even
                x, y = mix(x, y)  # y: soft targets, label smoothing already in them
                smoothing = 0.0
            with _autocast(device, amp_dtype):
                t_logits = None
                if use_teacher:
                    with torch.no_grad():
                        t_logits = teacher(x)
                s_logits = model(x)
            loss = kd_loss(s_logits, t_logits, y, T=cfg.kd_T, alpha=cfg.kd_alpha, label_smoothing=smoothing)
            for hook in hooks:
                extra = hook.extra_loss(student)
                if extra is not None:
                    loss = loss + extra
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"epoch {epoch + 1} step {i + 1}: loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(epoch * steps + i + 1)
            for hook in hooks:
                hook.on_step_end(student, epoch * steps + i + 1)
            loss_sum += loss.item()
            n_steps += 1
            bar.update(1)
            if (i + 1) % cfg.log_every == 0:
                bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}", lr=f"{lr:.3g}")
                if progress is False and rank == 0:
                    log.info("epoch %d step %d/%d loss %.4f lr %.3g", epoch + 1, i + 1, steps, loss_sum / n_steps, lr)
            if step_sleep:
                time.sleep(step_sleep)
        bar.close()
        loss_sum, n_steps = all_reduce_sum([loss_sum, n_steps], device)
        broadcast_buffers(student)
        top1 = top5 = None
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_steps, 1), "lr": lr}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            top1, top5 = _evaluate(student, val, device, amp_dtype, memory_format)
            if selection is not None:
                row["selection_top1"] = _evaluate(student, selection, device, amp_dtype, memory_format)[0]
        row.update({"val_top1": top1, "val_top5": top5, "seconds": round(time.perf_counter() - t0, 3)})
        metrics.append(row)
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if rank == 0:
            _append_metrics(metrics_path, row)
            state = {"format": CKPT_FORMAT, "epoch": epoch + 1, "model": student.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rngs, "metrics": metrics, "config": asdict(cfg),
                     "world_size": world, "hooks": [hook.state_dict() for hook in hooks]}
            _fsync_write(ckpt_path, lambda f: torch.save(state, f))
            log.info("epoch %d/%d: loss %.4f top1 %s top5 %s (%.1fs)", epoch + 1, cfg.epochs, row["train_loss"],
                     top1, top5, row["seconds"])

    done = len(metrics) >= cfg.epochs
    if done and rank == 0:
        _save_safetensors(student, out_dir / "model.safetensors")
    if world > 1:
        dist.barrier()
    evaluated = [m for m in metrics if m["val_top1"] is not None]
    return {
        "val_top1": evaluated[-1]["val_top1"] if evaluated else None,
        "val_top5": evaluated[-1]["val_top5"] if evaluated else None,
        **({"selection_top1": evaluated[-1].get("selection_top1") if evaluated else None} if selection else {}),
        "epochs": len(metrics),
        "seconds": round(sum(m["seconds"] for m in metrics), 3),
        "metrics": metrics,
        "finished": done,
        "world_size": world,
        "out_dir": str(out_dir),
        "config": asdict(cfg),
        **({"channels_last_refused": refused} if refused else {}),
    }


def _mixup(student: nn.Module, cfg: TrainConfig, device: torch.device):
    """timm's Mixup/CutMix (alpha ``cfg.mixup`` for both, one of them per batch) for ``student``'s class count,
    read from one eval-mode forward (a factorised head has no ``num_classes`` attribute to trust)."""
    from timm.data import Mixup

    with eval_mode(student), torch.no_grad():
        classes = student(torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=device)).shape[1]
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.mixup, label_smoothing=cfg.label_smoothing,
                 num_classes=classes)


# ----------------------------------------------------------------------------- command line

def build_models(model: str, num_classes: int | None = None, plan: str | Path | None = None,
                 checkpoint: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(student, teacher)``: the base (``model`` + ``checkpoint``) is the teacher; the student is the base
    decomposed with ``plan`` (a copy of the base when there is no plan). Random init is seeded by ``seed``."""
    from ..plan import Plan, compress
    from ..resolve import model_from_name

    torch.manual_seed(seed)
    base = model_from_name(model, num_classes=num_classes, checkpoint=checkpoint)
    student = copy.deepcopy(base)
    if plan is not None:
        student = compress(student, Plan.load(plan), init="decompose")
    return student, base


def finetune_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed :func:`add_finetune_args` options (``ValueError`` names a bad field)."""
    return TrainConfig(**train_options(args))


def run_finetune(args: argparse.Namespace, cfg: TrainConfig) -> dict:
    """Run what :func:`add_finetune_args` parsed; rank 0 prints the summary as one JSON line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    student, teacher = build_models(args.model, args.num_classes, args.plan, args.checkpoint, seed=cfg.seed)
    summary = finetune(student, None if args.no_teacher else teacher, args.train, args.val, args.out, cfg,
                       resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        if args.plan is not None:  # the weights travel with the plan that builds their architecture
            (args.out / "plan.json").write_text(Path(args.plan).read_text())
        print(json.dumps({k: summary[k] for k in ("val_top1", "val_top5", "epochs", "seconds", "world_size")}))
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m stresnet.train.engine",
                                description="KD fine-tuning of a compressed student (torchrun for DDP)")
    add_finetune_args(p)
    args = p.parse_args(argv)
    try:
        cfg = finetune_config(args)
    except ValueError as e:
        p.error(str(e))
    return run_finetune(args, cfg)


if __name__ == "__main__":
    main()
