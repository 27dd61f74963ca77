"""Write a search run to disk: one plan JSON per budget and method, a report JSON and a Pareto plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from .pipeline import SearchResult, plan_summary, space_report


def write_search(result: SearchResult, out: Path, base: Mapping, measured: Mapping[str, Mapping[str, dict]] | None = None,
                 extra: Mapping | None = None) -> dict:
    """Save ``plan_<budget>.json`` (searched), ``<method>_<budget>.json`` (baselines), ``report.json``, ``pareto.png``.

    ``base`` is the plan's base reference (``{"arch": ..., "num_classes": ...}``);
    ``measured[budget][method]`` optionally holds measured metrics (e.g. zero-shot top-1).
    """
    out.mkdir(parents=True, exist_ok=True)
    space = result.space
    budgets = {}
    for label, plan in result.plans.items():
        plan.base = dict(base)
        plan.save(out / f"plan_{label}.json")
        methods = {"searched": plan, **result.baselines.get(label, {})}
        rows = {}
        for method, p in methods.items():
            p.base = dict(base)
            if method != "searched":
                p.save(out / f"{method}_{label}.json")
            rows[method] = plan_summary(space, p)
            rows[method].update((measured or {}).get(label, {}).get(method, {}))
        budgets[label] = {"budget": plan.meta.get("budget"), "methods": rows}
    report = {
        "base": dict(base),
        "input_size": list(space.input_size),
        "base_cost": space.base_cost,
        "fixed_cost": space.fixed_cost,
        "grid_step": space.step,
        "seconds": {"tables": space.seconds, "solve": result.seconds, "total": space.seconds + result.seconds},
        **(dict(extra) if extra else {}),
        "budgets": budgets,
        "skipped": dict(space.skipped),  # convs / linears the search left as they are, with why
        "layers": space_report(space),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_pareto(report, out / "pareto.png")
    return report


def plot_pareto(report: Mapping, path: Path) -> None:
    """Estimated loss (and measured top-1 where present) against params, one marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({m for b in report["budgets"].values() for m in b["methods"]})
    has_acc = any("top1" in r for b in report["budgets"].values() for r in b["methods"].values())
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4), squeeze=False)
    markers = dict(zip(methods, "o^sDvx"))
    for method in methods:
        rows = [b["methods"][method] for b in report["budgets"].values() if method in b["methods"]]
        rows.sort(key=lambda r: r["params"])
        params = [r["params"] / 1e6 for r in rows]
        axes[0][0].plot(params, [r["estimated_loss"] for r in rows], marker=markers[method], label=method)
        if has_acc:
            axes[0][1].plot(params, [100 * r.get("top1", float("nan")) for r in rows], marker=markers[method], label=method)
    axes[0][0].set(xlabel="params (M)", ylabel=f"estimated loss ({report.get('estimator', 'mse')} estimator)",
                   xscale="log", title="estimator")
    if has_acc:
        base_top1 = report.get("base_top1")
        if base_top1 is not None:
            axes[0][1].axhline(100 * base_top1, color="grey", ls="--", label="base (uncompressed)")
        axes[0][1].set(xlabel="params (M)", ylabel="zero-shot top-1 (%)", xscale="log", title="measured")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
