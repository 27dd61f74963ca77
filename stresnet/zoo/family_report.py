"""The MCU family's two arms side by side, generated from ``recipes/results/stresnet_<variant>.json``.

Each family recipe fine-tunes two models with one budget: ST's rank table (``st``, the
timm name ``stresnet_<v>``) and the search's plan within ST's four budgets (``searched``,
``stresnet_<v>_searched``). A user choosing a model for a chip asks which is more
accurate *at the same budgets*, so every row shows all four costs at the budgets'
resolution (224 px) next to the measured top-1, and the verdict counts the val images
the difference amounts to: a gap of a few images is noise, and the card says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .family import VARIANTS, st_budget

if TYPE_CHECKING:
    from ..cost import Profile

ARMS = {"st": "ST's ranks", "searched": "searched at ST's budgets"}
LATENCY_FILE = "deploy/latency_family_224px.json"  # `stresnet bench latency ... --input-size 224 --json`
NOISE_IMAGES = 5  # a gap of at most this many val images is called a tie, not a win


@dataclass
class FamilyArm:
    """One arm's measured numbers: top-1 after the fine-tune, zero-shot, stem-only zero-shot, fine-tune epochs."""

    top1: float
    images: int
    zero_shot: float | None
    stem_zero_shot: float | None
    epochs: int | None
    stem: str
    lr: float | None = None            # the fine-tune's peak lr
    lr_tried: tuple[float, ...] = ()   # the values it was chosen from on the selection split (empty: fixed)
    start_tried: bool = False          # the start (no fine-tune) was a candidate too
    start_kept: bool = False           # ... and won: the published weights are the decomposed start
    selection_top1: float | None = None
    train_on: str = "all"              # fine-tune images: all of train/, or its fit part (TrainConfig.train_on)


def _arm(arm: Mapping[str, Any]) -> FamilyArm | None:
    if "final" not in arm:
        return None
    stages = {s["type"]: s["result"] for s in arm.get("stages", [])}
    decompose = stages.get("decompose", {})
    stem = stages.get("search", {}).get("chosen_stem")
    if stem is None:  # ST's plan: its stem comes with the rank table
        stem = "width32+proj" if decompose.get("stem_init") else "base"
    finetune = stages.get("finetune", {})
    trained = [c for c in finetune.get("candidates", []) if "config" in c]  # a kept start has no config
    config = finetune.get("config") or (trained[0]["config"] if trained else {})
    return FamilyArm(top1=arm["final"]["top1"], images=arm["final"]["images"],
                     zero_shot=decompose.get("zero_shot_top1"),
                     stem_zero_shot=(decompose.get("stem_init") or {}).get("zero_shot_top1"),
                     epochs=finetune.get("epochs"), stem=stem,
                     lr=None if not isinstance(finetune.get("chosen", {}), dict) else config.get("lr"),
                     lr_tried=tuple(c["values"]["lr"] for c in finetune.get("candidates", [])
                                    if isinstance(c["values"], dict) and "lr" in c["values"]),
                     start_tried=any(not isinstance(c["values"], dict) for c in finetune.get("candidates", [])),
                     start_kept=not isinstance(finetune.get("chosen", {}), dict),
                     selection_top1=finetune.get("selection_top1"), train_on=config.get("train_on", "all"))


def load_family(results: Path) -> dict[str, dict[str, FamilyArm]]:
    """``{variant: {arm: FamilyArm}}`` for every family recipe whose results hold arms (finished arms only)."""
    out: dict[str, dict[str, FamilyArm]] = {}
    for v in VARIANTS:
        path = results / f"stresnet_{v}.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        arms = {k: _arm(a) for k, a in (data.get("arms") or {}).items() if k in ARMS}
        arms = {k: a for k, a in arms.items() if a is not None}
        if arms:
            out[v] = arms
    return out


def load_latency(results: Path) -> dict[str, float]:
    """onnxruntime batch-1 median latency (ms) of each model in ``results/LATENCY_FILE``, if it was measured."""
    path = results / LATENCY_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {name: m["onnxruntime"]["median_ms"] for name, m in data["models"].items() if "onnxruntime" in m}


def _costs(name: str) -> dict[str, int]:
    """params, int8 flash, MACs and peak RAM of ``name`` with the Imagenette head at 224 px (the budgets' size)."""
    return _profiled(name).budget_costs()


@lru_cache(maxsize=None)
def _profiled(name: str) -> Profile:
    """``name`` profiled once per process: each variant's section is written for its cards and again for the
    index (a frozen :class:`~stresnet.cost.Profile`; ``budget_costs`` gives each caller a dict of its own)."""
    import timm

    from ..cost import profile

    return profile(timm.create_model(name, num_classes=10), (3, 224, 224))


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def verdict(variant: str, arms: Mapping[str, FamilyArm]) -> str:
    """One sentence: does the searched model beat ST's ranks after the same fine-tune, by how many images."""
    if set(arms) != set(ARMS):
        return f"{variant}: only the {', '.join(arms)} arm has finished; no comparison yet."
    st, searched = arms["st"], arms["searched"]
    gap = searched.top1 - st.top1
    images = round(abs(gap) * st.images)
    start = ""
    if st.zero_shot is not None and searched.zero_shot is not None:
        lead = searched.zero_shot - st.zero_shot
        start = f"; zero-shot it {'led' if lead > 0 else 'trailed'} by {100 * abs(lead):.2f} points"
    if gap > 0 and images > NOISE_IMAGES:
        return f"{variant}: the searched model beats ST's ranks by {100 * gap:.2f} points ({images} val images{start})."
    why = ""
    if start and searched.zero_shot > st.zero_shot and searched.top1 < searched.zero_shot:
        why = " The fine-tune (the same for both arms) lowered the searched model below its own zero-shot top-1"
        why += (f", even at the lr the selection split chose ({searched.lr:g} of "
                f"{', '.join(f'{v:g}' for v in searched.lr_tried)})." if searched.lr_tried else
                f": its learning rate ({searched.lr if searched.lr is not None else '?'}) was never chosen for a "
                "start this close to the base.")
    if images <= NOISE_IMAGES:
        return (f"{variant}: a tie ({100 * gap:+.2f} points, {images} of {st.images} val images, within noise{start}): "
                f"the search does not beat ST's ranks here.{why}")
    return (f"{variant}: the searched model does NOT beat ST's ranks ({100 * gap:+.2f} points, {images} val images"
            f"{start}).{why}")


def family_section(variant: str, arms: Mapping[str, FamilyArm], level: str = "##",
                   latency: Mapping[str, float] | None = None) -> list[str]:
    """A markdown table of both arms of ``variant`` (costs at 224 px, 10-class head; onnxruntime latency where
    ``latency`` has it) and the verdict."""
    latency = latency or {}
    budget = st_budget(variant, 10)
    names = {"st": f"stresnet_{variant}", "searched": f"stresnet_{variant}_searched"}
    rows = [f"{level} ST's ranks vs the search at stresnet_{variant}'s budgets", "",
            f"Recipe `recipes/stresnet_{variant}.yaml`, one fine-tune budget for both arms; top-1 on Imagenette val. "
            "Costs at 224 px with the 10-class head (the budgets are ST's own profile there: "
            f"params <= {budget['params']:,}, int8 flash <= {budget['flash']:,} B, MACs <= {budget['macs']:,}, "
            f"peak RAM <= {budget['ram']:,} B). Stem-only: the fitted narrowed stem in the base, nothing else changed.",
            "",
            "| arm | model | stem | params | int8 flash (B) | MACs | peak RAM (B) | latency (ms) | stem-only | zero-shot "
            "| epochs | lr | selection top-1 | top-1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, arm in arms.items():
        c = _costs(names[kind])
        rows.append(f"| {ARMS[kind]} | `{names[kind]}` | {arm.stem} | {c['params']:,} | {c['flash']:,} | {c['macs']:,} | "
                    f"{c['ram']:,} | {_ms(latency.get(names[kind]))} | {_pct(arm.stem_zero_shot)} | {_pct(arm.zero_shot)} | {arm.epochs} | "
                    f"{_lr(arm)} | {_pct(arm.selection_top1)} | {_pct(arm.top1)} |")
    note = ("Latency: onnxruntime, batch 1, 224 px, median of one run of `stresnet bench latency` on this project's "
            f"CPU (`recipes/results/{LATENCY_FILE}`)." if latency else "Latency: not measured yet.")
    return rows + ["", _data_note(arms), "", note, "", verdict(f"stresnet_{variant}", arms), ""]


def _lr(arm: FamilyArm) -> str:
    tried = [f"{v:g}" for v in arm.lr_tried] + (["no fine-tune"] if arm.start_tried else [])
    of = f" (of {', '.join(tried)})" if tried else ""
    if arm.start_kept:
        return "none: start kept" + of
    return "-" if arm.lr is None else f"{arm.lr:g}" + of


def _data_note(arms: Mapping[str, FamilyArm]) -> str:
    """What each arm fine-tuned on and how its lr was picked: the choice is made on the selection split, never val."""
    if all(a.train_on == "fit" for a in arms.values()):
        return ("Fine-tune data: train/ without its selection split (100 images per class) and its ILSVRC2012_val_* "
                "files. Where the lr column lists several values, each was fine-tuned and the one with the best "
                "selection-split top-1 was kept ('no fine-tune': the decomposed start itself was a candidate); val "
                "only reports. The base was trained on all of train/, selection images included, so selection "
                "top-1 reads high and favours staying close to the base: it ranks candidates, it is not an estimate "
                "of accuracy.")
    return "Fine-tune data: all of train/ (this recipe run predates the held-out selection split for fine-tunes)."


def family_card_notes(family: Mapping[str, Mapping[str, FamilyArm]],
                      latency: Mapping[str, float] | None = None) -> dict[str, str]:
    """Both arms' table on the card of each arm's ``.imagenette`` tag."""
    notes = {}
    for v, arms in family.items():
        text = "\n".join(family_section(v, arms, level="##", latency=latency))
        for name in (f"stresnet_{v}.imagenette", f"stresnet_{v}_searched.imagenette"):
            notes[name] = text
    return notes


def family_markdown(family: Mapping[str, Mapping[str, FamilyArm]], latency: Mapping[str, float] | None = None) -> str:
    """The zoo index's section: every variant's two arms."""
    if not family:
        return ""
    out = ["## The MCU family: ST's ranks vs the search at ST's budgets", ""]
    for v, arms in family.items():
        out += family_section(v, arms, level="###", latency=latency)
    return "\n".join(out)
