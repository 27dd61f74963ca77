"""Model cards for the zoo, generated from measured numbers (never hand-typed).

A card is YAML front matter in the Hub's format (library_name, license,
datasets, model-index metrics) plus sections: model details (params, GMACs,
int8 flash, peak RAM from :func:`stresnet.cost.profile`), usage, results with
the exact recipe command, sha256 and citation. Where no weights have been
published yet the card says so instead of quoting a number.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

CITATIONS = {  # by the arXiv id of a variant's paper (zoo.models.paper_of)
    "arXiv:2511.11716": "Sah, Chhabra, Durnerin. CompressNAS: global rank selection for Tucker-2 compression of CNNs. "
                   "arXiv:2511.11716 (CAI 2026).",
    "arXiv:2601.05364": "STResNet: selectively Tucker-2-decomposed ResNet-18s for microcontrollers. arXiv:2601.05364.",
    "arXiv:2111.01697": "Hawkins, Yang, Li, Lai, Chandra. Low-Rank+Sparse Tensor Compression for Neural Networks. "
           "arXiv:2111.01697.",
}
KINDS = {"tucker2": "Tucker-2", "svd": "SVD", "sparse": "sparse (masked)", "lrs": "low-rank + sparse", "tt": "tensor-train",
         "tt5": "tensor-train (5 cores)"}


def _front_matter(name: str, record: Mapping[str, Any] | None, dataset: str, kinds: list[str]) -> str:
    lines = ["---", "library_name: timm", "license: apache-2.0", "tags:", "- image-classification",
             "- timm", "- tensor-decomposition", *(f"- {k}" for k in kinds), "datasets:", f"- {dataset}"]
    metrics = (record or {}).get("metrics", {})
    if "top1" in metrics:
        lines += [
            "model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-classification",
            "    dataset:", f"      name: {dataset}", f"      type: {dataset}", "    metrics:",
            "    - type: accuracy", "      name: top-1", f"      value: {100 * metrics['top1']:.2f}",
        ]
        if "top5" in metrics:
            lines += ["    - type: accuracy", "      name: top-5", f"      value: {100 * metrics['top5']:.2f}"]
    return "\n".join(lines + ["---", ""])


def model_card(name: str, profile: Mapping[str, Any], record: Mapping[str, Any] | None = None,
               notes: str = "") -> str:
    """The card of ``arch.tag`` from its profile (``Profile.to_dict()``) and published record, if any."""
    from .models import packaged_plan, paper_of, zoo_tag

    arch, _, tag = name.partition(".")
    meaning, plan = zoo_tag(name), packaged_plan(arch)
    kinds = sorted({spec["type"] for spec in plan.layers.values()})
    size = profile.get("input_size", [3, 224, 224])
    out = [_front_matter(name, record, meaning.dataset, kinds), f"# {name}", ""]
    out += [
        "## Model details", "",
        f"- Architecture: timm `{plan.base['arch']}` + the plan `stresnet/zoo/plans/{arch}.json` "
        f"({', '.join(KINDS.get(k, k) for k in kinds)} layers made of plain convs and linears)",
        f"- Weights (`.{tag}`): {meaning.summary}",
        f"- Params: {profile['params'] / 1e6:.3f} M",
        f"- GMACs at {size[-1]}x{size[-1]}: {profile['macs'] / 1e9:.3f}",
        f"- int8 flash: {profile['flash_bytes'] / 1024:.1f} KiB",
        f"- Peak activation RAM (int8, batch 1): {profile['peak_ram_bytes'] / 1024:.1f} KiB",
        "",
        "## Usage", "",
        "```python",
        "import timm, stresnet  # importing stresnet registers the zoo",
        f"model = timm.create_model('{name}', pretrained=True).eval()",
        "```",
        "",
        "## Results", "",
    ]
    if record and record.get("metrics"):
        m = record["metrics"]
        split = "val" if meaning.evaluated_on == "val" else f"{meaning.evaluated_on}, 1000-way"
        rows = [(f"top-1 ({split})", f"{100 * m['top1']:.2f} %" if "top1" in m else None),
                (f"top-5 ({split})", f"{100 * m['top5']:.2f} %" if "top5" in m else None),
                ("top-1 change vs its base", f"{-m['top1_drop_points']:+.2f} points" if "top1_drop_points" in m else None),
                ("images evaluated", m.get("images")),
                ("params", f"{m['params'] / 1e6:.3f} M" if "params" in m else None),
                ("GMACs", f"{m['macs'] / 1e9:.3f}" if "macs" in m else None),
                ("int8 flash", f"{m['flash_bytes'] / 1024:.1f} KiB" if "flash_bytes" in m else None)]
        comp = m.get("compression") or {}
        rows += [(f"{k} reduction vs base", f"{v:.2f}x") for k, v in comp.items()]
        out += ["All numbers below were measured by the recipe run that produced these weights.", "",
                "| metric | value |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows if v is not None]
        out += ["", f"Reproduce: `{record.get('recipe', '')}`", "", f"sha256: `{record['sha256']}`", ""]
    else:
        out += ["No weights are published for this tag yet: nothing has been measured, so no accuracy is quoted.", ""]
    if notes:
        out += [notes, ""]
    out += ["## Citation", "", CITATIONS[paper_of(arch)], ""]
    return "\n".join(out)


def family_order(name: str) -> tuple[int, str]:
    """Sort key for ``arch.tag`` names: the zoo's own order (2x ... 32x, then pico ... tiny), unknown names last."""
    from .models import VARIANTS

    arch = name.split(".", 1)[0]
    return (VARIANTS.index(arch) if arch in VARIANTS else len(VARIANTS), name)


def write_cards(out_dir: Path, profiles: Mapping[str, Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]],
                notes: Mapping[str, str] | None = None) -> list[Path]:
    """One card per ``arch.tag`` in ``profiles`` (records and ``notes`` by the same keys), as ``out_dir/<name>.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, prof in sorted(profiles.items()):
        path = out_dir / f"{name}.md"
        path.write_text(model_card(name, prof, records.get(name), notes=(notes or {}).get(name, "")))
        paths.append(path)
    return paths


def index_markdown(profiles: Mapping[str, Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]],
                   base: Mapping[str, Any] | None = None, extra: str = "") -> str:
    """The family at a glance: one row per card (measured top-1 where weights were published), then ``extra``
    (the evidence section of :mod:`stresnet.zoo.report`)."""
    lines = ["# STResNet zoo", "",
             "Generated by `stresnet cards` (or `stresnet report`, the same generator) from measured profiles "
             "and recipe results (`recipes/results/`); "
             "no number here is typed by hand. Top-1 is on Imagenette `val` (1982 images) for `.imagenette` "
             "tags; `.in1k` weights need ImageNet and are not published yet. `.kd_imagenette` weights are 1000-class "
             "EfficientNet-Lite0 models distilled on Imagenette images only; their top-1 is 1000-way on the 435 "
             "ImageNet validation images inside Imagenette.", "",
             "| model | params (M) | GMACs | int8 flash (KiB) | peak RAM (KiB) | top-1 (%) | recipe |",
             "|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| resnet18 (base, {base.get('tag', 'imagenette')}) | {base['params'] / 1e6:.3f} | "
                     f"{base['macs'] / 1e9:.3f} | {base['flash_bytes'] / 1024:.1f} | {base['peak_ram_bytes'] / 1024:.1f} | "
                     f"{100 * base['top1']:.2f} | {base.get('recipe', '')} |")
    for name, prof in sorted(profiles.items(), key=lambda kv: family_order(kv[0])):
        m = (records.get(name) or {}).get("metrics", {})
        top1 = f"{100 * m['top1']:.2f}" if "top1" in m else "not published"
        recipe = (records.get(name) or {}).get("recipe", "")
        lines.append(f"| [{name}]({name}.md) | {prof['params'] / 1e6:.3f} | {prof['macs'] / 1e9:.3f} | "
                     f"{prof['flash_bytes'] / 1024:.1f} | {prof['peak_ram_bytes'] / 1024:.1f} | {top1} | {recipe} |")
    return "\n".join(lines + ["", "![accuracy vs size](accuracy_vs_size.png)", ""] + ([extra] if extra else []))


def plot_family(records: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any] | None, path: Path) -> Path | None:
    """Top-1 vs params of every published Imagenette variant, with the plain ResNet-18 base; None if nothing to plot."""
    points = {n: r["metrics"] for n, r in records.items() if n.endswith(".imagenette") and "top1" in r.get("metrics", {})}
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [m["params"] / 1e6 for m in points.values()]
    ys = [100 * m["top1"] for m in points.values()]
    searched = [n.split(".")[0].endswith("_searched") for n in points]
    for mark, label, pick in (("o", "STResNet zoo (recipes)", False), ("^", "MCU family searched at ST's budgets", True)):
        sel = [(x, y) for x, y, s in zip(xs, ys, searched) if s == pick]
        if sel:
            ax.plot(*zip(*sel), mark, label=label)
    placed: list[tuple[float, float, bool]] = []  # (x, y, label above) of the labels so far, left to right
    for x, y, name in sorted(zip(xs, ys, (n.split(".")[0] for n in points))):
        near = [a for px, py, a in placed if abs(math.log10(x / px)) < 0.4 and abs(y - py) < 3]
        above = bool(near) and not near[-1]  # a close neighbour's label below: put this one above, and back
        placed.append((x, y, above))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 5 if above else -10), fontsize=7)
    ax.margins(y=0.08)
    if base:
        ax.plot([base["params"] / 1e6], [100 * base["top1"]], "s", color="k", label="ResNet-18 (base)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (M, log scale)")
    ax.set_ylabel("top-1 on Imagenette val (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
