"""``stresnet demo``: the whole job on an embedded default, offline, in about two minutes on 2 CPU cores.

Train a timm ``resnet18`` from scratch on scikit-learn's ``load_digits`` (1797
8x8 grey digits, shipped inside scikit-learn, so no download), compress it to
2x / 4x / 8x fewer parameters with the CompressNAS search (Fisher estimator +
ILP) and, for comparison, with uniform Tucker-2 ranks at equal or fewer
parameters, both initialised by decomposition, and report accuracy zero-shot
and after a short distillation fine-tune. It exercises search -> plan ->
compress -> cost -> fine-tune end to end on data every install has.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .cost import profile
from .plan import Plan, compress
from .search.budgets import parse_budget
from .search.pipeline import build_space, run_search
from .train.distill import kd_loss
from .utils.metrics import topk_correct
from .utils.modes import eval_mode

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_FINETUNE_EPOCHS", "load_digits_data", "run_demo", "format_demo_table", "main"]

DEFAULT_EPOCHS = 6
DEFAULT_FINETUNE_EPOCHS = 2
IMAGE_SIZE = 32
BATCH_SIZE = 64
RANK_MULTIPLE = 4  # resnet18's narrowest convs have 64 channels: multiples of 4 keep 8x reachable
KD_TEMPERATURE = 4.0
ARCH = "resnet18"
NUM_CLASSES = 10


@dataclass(frozen=True)
class Data:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _to_images(x: Tensor) -> Tensor:
    """8x8 grey in [0, 16] -> 3 x 32 x 32 in [0, 1]: resnet18's stride-32 trunk needs a bigger image."""
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1)


def load_digits_data(seed: int = 0, test_size: float = 0.2) -> Data:
    """Stratified split of sklearn's digits, normalised with the training set's mean and std."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.data, digits.target, test_size=test_size, stratify=digits.target, random_state=seed)
    x_tr = _to_images(torch.tensor(x_tr, dtype=torch.float32))
    x_te = _to_images(torch.tensor(x_te, dtype=torch.float32))
    mean, std = x_tr.mean(), x_tr.std()
    return Data((x_tr - mean) / std, torch.tensor(y_tr), (x_te - mean) / std, torch.tensor(y_te))


def _batches(n: int, shuffle: bool, generator: torch.Generator | None = None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(BATCH_SIZE))


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in eval mode (the model's modes are restored afterwards)."""
    with eval_mode(model):
        correct = sum(topk_correct(model(x[i]), y[i], (1,))[0] for i in _batches(len(y), shuffle=False))
    return correct / len(y)


def train(model: nn.Module, data: Data, epochs: int, lr: float, seed: int, teacher: nn.Module | None = None,
          progress: bool = True, desc: str = "train") -> None:
    """AdamW + one-cycle cosine schedule; distils from ``teacher`` when given."""
    if epochs <= 0:
        return
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(data.y_train) / BATCH_SIZE)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    if teacher is not None:
        teacher.eval()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, file=sys.stderr)
    for _ in range(epochs):
        model.train()
        for idx in _batches(len(data.y_train), shuffle=True, generator=gen):
            x, y = data.x_train[idx], data.y_train[idx]
            out = model(x)
            soft = None
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x)
            # half CE on the labels, half T^2-scaled KL to the base's softened outputs; CE alone without a teacher
            loss = kd_loss(out, soft, y, T=KD_TEMPERATURE, alpha=0.5, label_smoothing=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()


def _row(name: str, model: nn.Module, data: Data, base_params: int, **extra: object) -> dict:
    prof = profile(model, (3, IMAGE_SIZE, IMAGE_SIZE))
    return {"model": name, "params": prof.params, "ratio": base_params / prof.params, "macs": prof.macs,
            "flash_bytes": prof.flash_bytes, **extra}


def run_demo(
    epochs: int | None = None,
    finetune_epochs: int | None = None,
    ratios: Sequence[int] = (2, 4, 8),
    seed: int = 0,
    out: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train the base, search and compress at each ratio, fine-tune, and return every measured number."""
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    finetune_epochs = DEFAULT_FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = load_digits_data(seed)
    import timm

    base = timm.create_model(ARCH, num_classes=NUM_CLASSES)
    train(base, data, epochs, lr=3e-3, seed=seed, progress=progress, desc="base")
    base.eval()
    base_params = sum(p.numel() for p in base.parameters())
    rows = [_row("resnet18 (base)", base, data, base_params, top1_zero_shot=evaluate(base, data.x_test, data.y_test),
                 top1_finetuned=None, seconds=time.perf_counter() - t0)]
    space = build_space(base, data.x_train[:512], data.y_train[:512], step=RANK_MULTIPLE, progress=progress)
    result = run_search(space, [parse_budget(f"{r}x") for r in ratios], baselines=("uniform",))
    for label, plan in result.plans.items():
        for method, p in (("searched", plan), ("uniform", result.baselines[label]["uniform"])):
            t1 = time.perf_counter()
            model = compress(copy.deepcopy(base), Plan(layers=p.layers), bases=space.bases)
            zero_shot = evaluate(model, data.x_test, data.y_test)
            train(model, data, finetune_epochs, lr=1e-3, seed=seed, teacher=base, progress=progress,
                  desc=f"{label} {method}")
            rows.append(_row(f"{label} {method}", model, data, base_params, top1_zero_shot=zero_shot,
                             top1_finetuned=evaluate(model, data.x_test, data.y_test),
                             seconds=time.perf_counter() - t1))
            if out is not None:
                Plan(layers=p.layers, base={"arch": ARCH, "num_classes": NUM_CLASSES}, meta=p.meta).save(
                    Path(out) / f"{method}_{label}.json")
    return {"dataset": "sklearn digits (1797 images, 8x8 -> 32x32)", "epochs": epochs,
            "finetune_epochs": finetune_epochs, "seed": seed, "search_seconds": space.seconds + result.seconds,
            "seconds": time.perf_counter() - t0, "rows": rows}


def format_demo_table(result: dict) -> str:
    """The demo's rows as an aligned text table."""
    head = ["model", "params", "ratio", "MMACs", "top-1 zero-shot", "top-1 fine-tuned", "seconds"]
    lines = []
    for r in result["rows"]:
        ft = "-" if r["top1_finetuned"] is None else f"{100 * r['top1_finetuned']:.1f} %"
        lines.append([r["model"], f"{r['params']:,}", f"{r['ratio']:.1f}x", f"{r['macs'] / 1e6:.1f}",
                      f"{100 * r['top1_zero_shot']:.1f} %", ft, f"{r['seconds']:.0f}"])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    body = [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)]
    tail = (f"{result['dataset']}; base {result['epochs']} epochs, KD fine-tune {result['finetune_epochs']} epochs; "
            f"search {result['search_seconds']:.1f} s; total {result['seconds']:.0f} s")
    return "\n".join(body + [tail])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run_demo(args.epochs, args.finetune_epochs, seed=args.seed)
    print(format_demo_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
