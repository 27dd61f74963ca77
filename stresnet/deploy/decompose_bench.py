"""``stresnet bench decompose``: our Tucker-2 against tensorly's ``partial_tucker``, side by side in one run.

For every 3x3 conv of resnet18 at ranks ``C/4``: wall time and relative
reconstruction error of (a) ``mode_bases`` + ``tucker2`` (Gram-matrix
eigendecompositions, optional HOOI sweeps) and (b) tensorly's ``partial_tucker``
with its defaults (numpy backend: SVD init, up to 100 HOOI iterations). Also
the cost of deriving ``n`` candidate ranks from one set of mode bases against
deriving one, which is what makes a rank search cheap. Best of ``repeats``.
"""
from __future__ import annotations

import timeit
from pathlib import Path
from typing import Callable

import torch

from .. import decompose as dec


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` single calls (``timeit``: perf_counter, garbage collection paused while timing)."""
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def _kernels(model_name: str, checkpoint: Path | None) -> dict[str, torch.Tensor]:
    from ..resolve import model_from_name

    model = model_from_name(model_name, num_classes=10 if checkpoint else None, checkpoint=checkpoint)
    return {n: m.weight.detach() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 3}


def bench_decompose(
    model_name: str = "resnet18",
    checkpoint: Path | None = None,
    rank_divisor: int = 4,
    n_candidates: int = 10,
    hooi_iters: int = 1,
    repeats: int = 3,
    max_layers: int | None = None,
) -> dict:
    """Time and error of ours vs tensorly over every 3x3 conv (the first ``max_layers``), plus the
    many-candidates cost ratio."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("numpy")
    kernels = dict(list(_kernels(model_name, checkpoint).items())[:max_layers])
    rows = []
    for name, w in kernels.items():
        ranks = [w.shape[0] // rank_divisor, w.shape[1] // rank_divisor]
        ours = lambda: dec.tucker2(dec.mode_bases(w), ranks, n_iter=hooi_iters)
        w_np = w.double().numpy()
        theirs = lambda: partial_tucker(w_np, rank=ranks, modes=[0, 1])
        core, factors = ours()
        err_ours = float((dec.tucker2_to_tensor(core, factors) - w).norm() / w.norm())
        (t_core, t_factors), _ = theirs()
        rebuilt = tl.tenalg.multi_mode_dot(t_core, t_factors, modes=[0, 1])
        err_theirs = float(((rebuilt - w_np) ** 2).sum() ** 0.5 / (w_np**2).sum() ** 0.5)
        grid = torch.linspace(w.shape[0] / 16, w.shape[0], n_candidates).round().int().tolist()

        def many() -> None:
            bases = dec.mode_bases(w)
            for r in grid:
                dec.tucker2(bases, [r, min(r, w.shape[1])])

        one = lambda: dec.tucker2(dec.mode_bases(w), ranks)
        rows.append({
            "layer": name, "shape": list(w.shape), "ranks": ranks,
            "ours_s": _best_time(ours, repeats), "tensorly_s": _best_time(theirs, repeats),
            "err_ours": err_ours, "err_tensorly": err_theirs,
            "one_rank_s": _best_time(one, repeats), "many_ranks_s": _best_time(many, repeats),
        })
    total = lambda k: sum(r[k] for r in rows)
    sq = lambda k: sum((r[k] ** 2) * float(kernels[r["layer"]].norm() ** 2) for r in rows)
    energy = sum(float(w.norm() ** 2) for w in kernels.values())
    return {
        "model": model_name, "checkpoint": str(checkpoint) if checkpoint else None, "layers": rows,
        "hooi_iters": hooi_iters, "n_candidates": n_candidates, "rank_divisor": rank_divisor,
        "speedup": total("tensorly_s") / total("ours_s"),
        "error_ratio": (sq("err_ours") / energy) ** 0.5 / (sq("err_tensorly") / energy) ** 0.5,
        "worst_layer_error_ratio": max(r["err_ours"] / r["err_tensorly"] for r in rows),
        "candidates_cost_ratio": total("many_ranks_s") / total("one_rank_s"),
    }


def format_bench(result: dict) -> str:
    """Per-layer rows and the three ratios the acceptance asks for."""
    lines = [f"{'layer':<18}{'ranks':>12}{'ours ms':>10}{'tensorly ms':>13}{'err ours':>10}{'err tl':>9}"]
    for r in result["layers"]:
        lines.append(f"{r['layer']:<18}{str(r['ranks']):>12}{1e3 * r['ours_s']:>10.1f}{1e3 * r['tensorly_s']:>13.1f}"
                     f"{r['err_ours']:>10.4f}{r['err_tensorly']:>9.4f}")
    lines += [
        f"speedup vs tensorly.partial_tucker (same run): {result['speedup']:.1f}x "
        f"(HOOI sweeps: {result['hooi_iters']})",
        f"reconstruction error ratio ours/tensorly: {result['error_ratio']:.4f} "
        f"(worst layer {result['worst_layer_error_ratio']:.4f})",
        f"{result['n_candidates']} candidate ranks from one set of mode bases cost "
        f"{result['candidates_cost_ratio']:.2f}x one rank",
    ]
    return "\n".join(lines)
