"""Evidence report: the family's accuracy-vs-size front against its baselines, from recipe results only.

The plan of the evidence is the recipes (``recipes/evidence_*.yaml``: which
arms exist, for which zoo variant, via ``evidence: {variant: ...}``); the
numbers are their results JSONs (``recipes/results/<name>.json``). An arm
listed in a recipe without a finished ``eval`` is shown as "not run", never
dropped or filled in. Arms are named by kind (``searched``, ``uniform``,
``scratch_kd``, ``scratch``, ``pruned``; optionally ``searched_direct`` / ``uniform_direct``
(arms 1d/2d) or ``searched_admm`` / ``uniform_admm`` (1b/2b): arms 1 and 2 by the other
initialisation route, direct decomposition or ADMM), seed repeats as ``<kind>_seed<N>``;
repeats of one kind are pooled into mean +/- std (sample std), and two arms that ran the same seeds are
also compared seed by seed (:func:`_paired`). An optional
``evidence: {note: ...}`` in a recipe is printed under its variant's verdicts:
the place to say *why* arm 1 lost where it did (words only; numbers come
from the JSONs).

Everything written here (markdown and ``pareto.png``) is a pure function of
those files, so ``stresnet report`` regenerates it byte for byte.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

__all__ = ["ReportError", "ARMS", "Evidence", "load_evidence", "evidence_markdown", "card_notes", "plot_pareto"]


class ArmKind(NamedTuple):
    """An arm's number and short description; ``against``: the uniform arms a searched arm meets at equal params
    and at most equal MACs (issue #18), each verdict saying which budgets are equal."""

    num: str
    text: str
    against: tuple[str, ...] = ()


# kind: its number and description; the five arms every evidence variant has
ARMS: dict[str, ArmKind] = {
    "searched": ArmKind("1", "the zoo plan, decomposed from the base, KD"),
    "uniform": ArmKind("2", "uniform ranks at >= arm 1's params, decomposed, KD"),
    "scratch_kd": ArmKind("3", "arm 1's architecture, random init, KD"),
    "scratch": ArmKind("4", "arm 1's architecture, random init, no KD"),
    "pruned": ArmKind("5", "dense ResNet-18 magnitude-pruned to arm 1's stored params, KD"),
}
# optional arms, shown only for the variants whose recipes list them: arms 1 and 2 by the ADMM route, which
# spends part of the same epochs on the dense base (pulled toward the plan's ranks) before decomposing
EXTRA_ARMS: dict[str, ArmKind] = {
    "searched_admm": ArmKind("1b", "arm 1's plan, ADMM on the dense base for part of the epochs, then decomposed, KD"),
    "uniform_admm": ArmKind("2b", "arm 2's plan by the same ADMM route"),
    "searched_direct": ArmKind("1d", "arm 1's plan, decomposed from the base directly (no ADMM), KD for all the "
                                     "epochs"),
    "uniform_direct": ArmKind("2d", "arm 2's plan, decomposed directly (no ADMM), KD for all the epochs"),
    "searched_macs": ArmKind("1m", "the search at arm 2d's params and at most its MACs, decomposed directly, KD for "
                                   "all the epochs", against=("uniform_direct",)),
    # arms 1m and 2d with calibrated decompositions (output-response bases on fit-part train/ images): the search
    # scores them and both plans are built with them, so the pair again differs only in the ranks
    "searched_macs_cal": ArmKind("1mc", "arm 1m's budget, the search scoring calibrated decompositions, built with "
                                        "them, KD for all the epochs", against=("uniform_direct_cal",)),
    "uniform_direct_cal": ArmKind("2dc", "arm 2d's plan, decomposed with calibrated bases on the same images, KD for "
                                         "all the epochs"),
    # the route recipes/select_8x.yaml chose after the fine-tune on the selection split (issue #18)
    "searched_step4_cal": ArmKind("1sel", "the search on the step-4 grid (uniform's ranks are on it) at arm 2d's "
                                          "params and MACs, scoring calibrated decompositions, built with them, KD "
                                          "for all the epochs", against=("uniform_direct_cal", "uniform_direct")),
    # arm 1sel's search with weight-only bases, arm 2d's like-for-like partner: recipes/select_8x_fitbase.yaml
    # (a base that never saw the selection split) ranked it above uniform ranks with the same bases
    "searched_step4": ArmKind("1sw", "the search on the step-4 grid at arm 2d's params and MACs, scoring "
                                     "weight-only decompositions, built with them, KD for all the epochs",
                              against=("uniform_direct",)),
    # the route recipes/select_8x_fitbase.yaml chose once it also offered tied ranks (one per layer, as STResNet)
    "searched_step4t_cal": ArmKind("1t", "arm 1sel's search with one rank for both channel modes of each layer, "
                                         "scoring calibrated decompositions, built with them, KD for all the epochs",
                                   against=("uniform_direct_cal", "uniform_direct")),
}
ROUTE_NOTE = ", by the ADMM route (the dense base is pulled toward the ranks before decomposing)"
ALL_ARMS = {**ARMS, **EXTRA_ARMS}
MARKERS = {"searched": ("o", "C3"), "uniform": ("s", "C0"), "scratch_kd": ("^", "C2"), "scratch": ("v", "C1"),
           "pruned": ("D", "C4"), "searched_admm": ("o", "C3"), "uniform_admm": ("s", "C0"),
           "searched_direct": ("o", "C3"), "uniform_direct": ("s", "C0"),
           "searched_macs": ("P", "C5"), "searched_macs_cal": ("P", "C6"),
           "uniform_direct_cal": ("s", "C7"), "searched_step4_cal": ("X", "C8"),
           "searched_step4": ("X", "C9"), "searched_step4t_cal": ("*", "C8")}  # the other route: hollow markers
# fine-tune fields that must match between arms for "the same budget" (KD and seed differ by design)
BUDGET_KEYS = ("epochs", "input_size", "batch_size", "optimizer", "lr", "min_lr", "momentum", "weight_decay",
               "warmup_epochs", "label_smoothing", "kd_T", "max_steps_per_epoch")


class ReportError(ValueError):
    """A recipe or results file the report cannot read: the one-line message names the file."""


@dataclass
class Run:
    """One finished arm instance (one recipe arm, one seed)."""

    recipe: str
    arm: str
    top1: float
    top5: float
    images: int
    params: int
    macs: int
    flash_bytes: int
    epochs: int | None
    seed: int | None
    seconds: float | None
    teacher: bool
    config: dict
    hardware: dict | None
    admm_epochs: int = 0  # of ``epochs``, spent on ADMM of the dense base before decomposing
    latency_ms: float | None = None  # onnxruntime, batch 1, from LATENCY_FILE (None: not measured)
    speedup: float | None = None  # dense base ms / this arm's ms, in that same run


@dataclass
class Arm:
    kind: str
    runs: list[Run] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "recipe:arm" listed but without a finished eval

    def values(self, key: str) -> list[float]:
        return [getattr(r, key) for r in self.runs]

    def mean(self, key: str = "top1") -> float:
        v = self.values(key)
        return sum(v) / len(v)

    def std(self, key: str = "top1") -> float | None:
        v = self.values(key)
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


@dataclass
class Evidence:
    """Every arm of one zoo variant, pooled over the recipes that name it."""

    variant: str
    recipes: list[str] = field(default_factory=list)
    arms: dict[str, Arm] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [r for arm in self.arms.values() for r in arm.runs]

    def label(self, kind: str) -> str:
        """The arm's description; arms 1 and 2 say so where their runs took the ADMM route."""
        label = ALL_ARMS[kind].text
        if kind in ("searched", "uniform") and any(r.admm_epochs for r in self.arms[kind].runs):
            label += ROUTE_NOTE
        return label

    def shown(self) -> dict[str, tuple[str, str]]:
        """The five arms, then the optional ones a recipe lists (run or not): ``{kind: (number, label)}``."""
        return {k: (arm.num, self.label(k)) for k, arm in ALL_ARMS.items()
                if k in ARMS or self.arms[k].runs or self.arms[k].missing}


# ----------------------------------------------------------------------------- loading

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object at the top level")
    return data


def _read_recipe(path: Path) -> dict:
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("arms"), dict):
        raise ReportError(f"{path}: an evidence recipe needs 'arms'")
    if not isinstance(recipe.get("evidence"), dict) or "variant" not in recipe["evidence"]:
        raise ReportError(f"{path}: missing 'evidence: {{variant: ...}}' (which zoo variant the arms are about)")
    return recipe


def _kind(arm: str, where: str) -> str:
    m = re.fullmatch(r"(.+?)(_seed\d+)?", arm)
    if m is None or m.group(1) not in ALL_ARMS:
        raise ReportError(f"{where}: arm {arm!r} is not one of {', '.join(ALL_ARMS)} (optionally + _seed<N>)")
    return m.group(1)


def _run(recipe: str, arm: str, row: Mapping[str, Any], hardware: dict | None, where: str) -> Run:
    stages = row.get("stages") or []
    for s in stages:  # a referenced recipe: its own stages and hardware
        if s.get("type") == "reference":
            stages, hardware = s["result"].get("stages") or [], s["result"].get("hardware")
    tune = [s for s in stages if s.get("type") == "finetune"]
    ft = tune[-1] if tune else {"params": {}, "result": {}}
    config = dict(ft["result"].get("config") or {})
    epochs, seconds = ft["result"].get("epochs"), ft["result"].get("seconds")
    admm = [s["result"] for s in stages if s.get("type") == "admm"]
    admm_epochs = sum(int(a.get("epochs") or 0) for a in admm)
    if admm and epochs is not None:  # ADMM epochs are part of the budget: count them with the fine-tune's
        epochs += admm_epochs
        config["epochs"] = epochs
        if seconds is not None and all(a.get("seconds") is not None for a in admm):
            seconds += sum(a["seconds"] for a in admm)
    final = row["final"]
    try:
        return Run(recipe=recipe, arm=arm, top1=float(final["top1"]), top5=float(final["top5"]),
                   images=int(final["images"]), params=int(final["params"]), macs=int(final["macs"]),
                   flash_bytes=int(final["flash_bytes"]), epochs=epochs,
                   seed=config.get("seed"), seconds=seconds,
                   teacher=(ft.get("params") or {}).get("teacher", "base") != "none",
                   config=config, hardware=ft["result"].get("hardware", hardware), admm_epochs=admm_epochs)
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{where}: arm {arm!r} has a final eval without {e}") from None


LATENCY_FILE = Path("deploy") / "latency_evidence_224px.json"  # in the results folder: `stresnet bench evidence-latency`


def load_evidence(recipes_dir: Path, results_dir: Path) -> tuple[list[Evidence], dict | None]:
    """Every ``evidence_*.yaml`` in ``recipes_dir`` with its results from ``results_dir``; and the base's eval.
    Arms get their measured latency from ``results_dir / LATENCY_FILE`` when it has them."""
    if not recipes_dir.is_dir():
        raise ReportError(f"{recipes_dir}: no such recipes folder")
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: no such results folder")
    by_variant: dict[str, Evidence] = {}
    base = None
    timed = (_read_json(results_dir / LATENCY_FILE).get("arms") or {}) if (results_dir / LATENCY_FILE).is_file() else {}
    for path in sorted(recipes_dir.glob("evidence_*.yaml")):
        recipe = _read_recipe(path)
        name = str(recipe.get("name", path.stem))
        variant = str(recipe["evidence"]["variant"])
        ev = by_variant.setdefault(variant, Evidence(variant, arms={k: Arm(k) for k in ALL_ARMS}))
        ev.recipes.append(name)
        if recipe["evidence"].get("note"):
            ev.notes.append(str(recipe["evidence"]["note"]).strip())
        res_path = results_dir / f"{name}.json"
        results = _read_json(res_path) if res_path.is_file() else {}
        done = results.get("arms") or {}
        for arm in recipe["arms"]:
            kind = _kind(str(arm), str(path))
            row = done.get(arm) or {}
            if row.get("final"):
                run = _run(name, str(arm), row, results.get("hardware"), str(res_path))
                if f"{name}:{arm}" in timed:
                    run.latency_ms = float(timed[f"{name}:{arm}"]["median_ms"])
                    run.speedup = float(timed[f"{name}:{arm}"]["speedup"])
                ev.arms[kind].runs.append(run)
            else:
                ev.arms[kind].missing.append(f"{name}:{arm}")
            for s in row.get("stages") or []:
                if base is None and s.get("type") == "reference" and (s["result"].get("base") or {}).get("top1"):
                    base = s["result"]["base"]
        if base is None and (results.get("base") or {}).get("top1") is not None:
            base = results["base"]
    order = {v: i for i, v in enumerate(("stresnet18_8x", "stresnet18_16x", "stresnet18_32x", "stresnet_pico"))}
    return sorted(by_variant.values(), key=lambda e: (order.get(e.variant, len(order)), e.variant)), base


# ----------------------------------------------------------------------------- text

def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _top1(arm: Arm) -> str:
    if not arm.runs:
        return "not run"
    std = arm.std()
    text = _pct(arm.mean()) if std is None else f"{_pct(arm.mean())} ± {_pct(std)} (n={len(arm.runs)})"
    if arm.missing:
        text += f", {len(arm.missing)} not run"
    return text


def _hardware(h: dict | None) -> str:
    if not h:
        return "device not recorded"
    if h.get("device") == "cuda":
        return f"{h.get('count', 1)}x {h.get('name', 'GPU')} (GPU-minutes)"
    threads = h.get("threads", "?")
    return f"CPU, {threads} thread{'' if threads == 1 else 's'} of {h.get('cores', '?')} cores (CPU-minutes)"


def _budget(runs: list[Run]) -> tuple[str, list[str]]:
    """The shared fine-tune budget in words, and every field where the runs disagree."""
    if not runs:
        return "no arm has run yet", []
    ref = runs[0]
    diffs = []
    for r in runs[1:]:
        for k in BUDGET_KEYS:
            if r.config.get(k) != ref.config.get(k):
                diffs.append(f"{k} is {r.config.get(k)} in {r.recipe}:{r.arm} but {ref.config.get(k)} in "
                             f"{ref.recipe}:{ref.arm}")
    c = ref.config
    kd = sorted({(r.config.get("kd_T"), r.config.get("kd_alpha")) for r in runs if r.teacher}, key=str)
    kd_text = ", ".join(f"T={t} alpha={a}" for t, a in kd) if kd else "none"
    no_kd = sorted({f"arm {ALL_ARMS[_kind(r.arm, r.recipe)].num}" for r in runs if not r.teacher})
    admm = sorted({ALL_ARMS[_kind(r.arm, r.recipe)].num for r in runs if r.admm_epochs})
    admm_spent = " or ".join(str(e) for e in sorted({r.admm_epochs for r in runs if r.admm_epochs}))
    words = (f"{c.get('epochs')} epochs at {c.get('input_size')} px, batch {c.get('batch_size')}, "
             f"{c.get('optimizer')} lr {c.get('lr')} cosine to {c.get('min_lr')}, {c.get('warmup_epochs')} warm-up "
             f"epochs, label smoothing {c.get('label_smoothing')}; KD from the base: {kd_text}"
             + (f" ({', '.join(no_kd)}: no teacher, plain cross-entropy)" if no_kd else "")
             + (f"; arm{'s' if len(admm) > 1 else ''} {', '.join(admm)} spend{'' if len(admm) > 1 else 's'} "
                f"{admm_spent} of those epochs on ADMM of the dense base (KD, toward the plan's ranks) and the rest "
                f"fine-tuning the decomposed model, each part with its own warm-up and cosine" if admm else ""))
    return words, diffs


def _compare(first: Arm, num1: str, other: Arm, num: str, label: str) -> str:
    """One plain sentence: does arm ``num1`` beat arm ``num``, by how many points and images, against what noise."""
    d = 100 * (first.mean() - other.mean())
    images = round(abs(d) / 100 * first.runs[0].images)
    if first.std() is not None or other.std() is not None:
        def sd(a: Arm) -> str:
            return f"{100 * a.std():.2f} pt (n={len(a.runs)})" if a.std() is not None else "a single seed"
        spread = f"; seed std: arm {num1} {sd(first)}, arm {num} {sd(other)}"
    else:
        spread = "; one seed each, so no seed spread to judge noise by"
    spread += _paired(first, other)
    if d > 0:
        return f"- Arm {num1} beats arm {num} ({label}) by {d:.2f} pt ({_images(images)}){spread}."
    if d == 0:
        return f"- **Arm {num1} does not beat arm {num}** ({label}): they tie{spread}."
    return (f"- **Arm {num1} does not beat arm {num}** ({label}): arm {num} is ahead by {-d:.2f} pt "
            f"({_images(images)}){spread}.")


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def _paired(first: Arm, other: Arm) -> str:
    """The gap seed by seed, where both arms ran the same fine-tune seeds (same data order): the spread of those
    differences, not of each arm, is the noise a ranking must clear. A 95 % t-interval of the mean difference
    (scipy); "" when fewer than two seeds are shared."""
    from scipy import stats

    mine, theirs = ({r.seed: r.top1 for r in a.runs if r.seed is not None} for a in (first, other))
    seeds = sorted(set(mine) & set(theirs))
    if len(seeds) < 2:
        return ""
    diffs = [100 * (mine[s] - theirs[s]) for s in seeds]
    mean = sum(diffs) / len(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * stats.sem(diffs)  # not t.interval: it gives nan at zero spread
    low, high = mean - half, mean + half
    where = "contains 0: the gap is inside seed noise" if low <= 0 <= high else "excludes 0"
    return (f"; paired by fine-tune seed ({', '.join(map(str, seeds))}): {', '.join(f'{x:+.2f}' for x in diffs)} pt, "
            f"95 % interval of the mean {low:+.2f} to {high:+.2f} pt ({where})")


def _verdicts(ev: Evidence) -> list[str]:
    first = ev.arms["searched"]
    if not first.runs:
        return ["- Arm 1 has not run: no comparison is made."]
    out = []
    for kind, arm in ARMS.items():
        if kind == "searched":
            continue
        num, other = arm.num, ev.arms[kind]
        out.append(_compare(first, "1", other, num, ev.label(kind)) if other.runs
                   else f"- Arm {num} ({ev.label(kind)}) has not run: no comparison.")
    # the other route for arms 1 and 2 (ADMM where arm 1 is direct, direct where arm 1 took ADMM): arm 1 against
    # both (same plan; uniform ranks at their other route), and the two plans like for like by that route
    for alt, alt_uniform in (("searched_admm", "uniform_admm"), ("searched_direct", "uniform_direct")):
        num, num_uniform = ALL_ARMS[alt].num, ALL_ARMS[alt_uniform].num
        if ev.arms[alt].runs:
            out.append(_compare(first, "1", ev.arms[alt], num, ev.label(alt)))
        if ev.arms[alt_uniform].runs:
            out.append(_compare(first, "1", ev.arms[alt_uniform], num_uniform, ev.label(alt_uniform)))
        if ev.arms[alt].runs and ev.arms[alt_uniform].runs:
            out.append(_compare(ev.arms[alt], num, ev.arms[alt_uniform], num_uniform, ev.label(alt_uniform)))
    for searched, uniform_kind in ((k, u) for k, arm in EXTRA_ARMS.items() for u in arm.against):
        macs, uniform = ev.arms[searched], ev.arms[uniform_kind]
        if macs.runs and uniform.runs:  # the comparison at equal compute (issue #18): say which budgets are equal
            m, u = macs.runs[0], uniform.runs[0]
            equal = (f"params {m.params / 1e6:.3f} M vs {u.params / 1e6:.3f} M, MACs {m.macs / 1e6:.1f} M vs "
                     f"{u.macs / 1e6:.1f} M: " + ("at most equal params and MACs" if m.params <= u.params
                                                  and m.macs <= u.macs else "**the budget is NOT equal**"))
            out.append(_compare(macs, ALL_ARMS[searched].num, uniform, ALL_ARMS[uniform_kind].num,
                                f"{ev.label(uniform_kind)}; {equal}"))
    return out


def _table(ev: Evidence, base: Mapping[str, Any] | None) -> list[str]:
    lines = ["| arm | what | top-1 (%) | vs base (pt) | top-5 (%) | params (M) | MMACs | ort ms (224 px) | speedup "
             "| int8 flash (KiB) | epochs | fine-tune min | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, (num, label) in ev.shown().items():
        arm = ev.arms[kind]
        if not arm.runs:
            lines.append(f"| {num} | {label} | not run | - | - | - | - | - | - | - | - | - | - |")
            continue
        r0 = arm.runs[0]
        vs = f"{100 * (arm.mean() - base['top1']):+.2f}" if base else "-"
        minutes = [r.seconds / 60 for r in arm.runs if r.seconds is not None]
        mins = f"{sum(minutes) / len(minutes):.1f}" if minutes else "-"
        seeds = ", ".join(str(r.seed) for r in arm.runs)
        ms = f"{r0.latency_ms:.2f}" if r0.latency_ms is not None else "-"
        speed = f"{r0.speedup:.2f}x" if r0.speedup is not None else "-"
        lines.append(f"| {num} | {label} | {_top1(arm)} | {vs} | {_pct(arm.mean('top5'))} | {r0.params / 1e6:.3f} | "
                     f"{r0.macs / 1e6:.1f} | {ms} | {speed} | {r0.flash_bytes / 1024:.1f} | {r0.epochs} | {mins} | "
                     f"{seeds} |")
    return lines


def _variant_section(ev: Evidence, base: Mapping[str, Any] | None, level: str = "###") -> list[str]:
    runs = ev.runs
    budget, diffs = _budget(runs)
    hw = sorted({_hardware(r.hardware) for r in runs})
    lines = [f"{level} {ev.variant}", "",
             "Recipes: " + ", ".join(f"`recipes/{n}.yaml`" for n in ev.recipes) + ".", ""]
    lines += _table(ev, base) + [""]
    if any(r.latency_ms is not None for r in runs):
        lines += ["Equal across arms: params (arms 2 and 2d at or just above arm 1's; arm 5 counts values and "
                  "indices) and the fine-tune budget below. Not equal: MACs (at 128 px, as trained) and latency; "
                  "arm 1m, where listed, is the search held to arm 2d's params and MACs. Latency: onnxruntime, "
                  "batch 1, 224 px, every arm's architecture rebuilt from its results and timed in one run with the "
                  "dense ResNet-18 (speedup = its ms / the arm's); a pruned arm runs dense there "
                  "(`stresnet bench evidence-latency`), with subnormal floats flushed to zero (random weights "
                  "underflow into them in some draws). The VM these were measured on loses most of its second core "
                  "in spells that slow small networks by up to 2 ms while ResNet-18 barely moves: read the ratios "
                  "within this one run, not against runs elsewhere.", ""]
    checked = f"the same for the {len(runs)} runs above (checked from their JSONs; KD and seed aside)"
    lines.append(f"Budget{', ' + checked if len(runs) > 1 and not diffs else ''}: {budget}."
                 + (f" Fine-tune minutes on: {'; '.join(hw)}." if hw else ""))
    if diffs:
        lines += ["", "**The budgets are not identical**: " + "; ".join(diffs) + "."]
    if runs:
        lines += ["", f"One `val` image is {100 / runs[0].images:.2f} pt ({runs[0].images} images)."]
    lines += [""] + _verdicts(ev)
    lines += [""] + [f"Note: {n}" for n in ev.notes] + ([""] if ev.notes else [])
    return lines


def evidence_markdown(evidence: list[Evidence], base: Mapping[str, Any] | None) -> str:
    """The evidence section of ``zoo_cards/README.md``: one table per variant, plain verdicts, the budget."""
    lines = ["## Evidence: the zoo plans against their baselines, one fine-tune budget", "",
             "Generated by `stresnet report` from `recipes/evidence_*.yaml` and their results in "
             "`recipes/results/`; an arm without results is shown as not run. Arm 1 is the zoo recipe "
             "(CompressNAS-searched plans; pico: the STResNet rank table). Arms: "
             + "; ".join(f"{a.num} = {a.text}" for a in ARMS.values()) + ". "
             "Top-1/top-5 on Imagenette `val`; \"fine-tune min\" is the fine-tuning wall time per run, which "
             "depends on what else the machine was running: the budget is the epochs and schedule.", ""]
    if base:
        lines += [f"Base (uncompressed ResNet-18): {_pct(base['top1'])} % top-1 at {base['params'] / 1e6:.3f} M "
                  f"params.", ""]
    if not evidence:
        lines += ["No evidence recipe found.", ""]
    for ev in evidence:
        lines += _variant_section(ev, base)
    lines += ["![top-1 vs params, every arm](pareto.png)", ""]
    return "\n".join(lines)


def card_notes(evidence: list[Evidence], base: Mapping[str, Any] | None, tag: str = "imagenette") -> dict[str, str]:
    """``{"<variant>.<tag>": markdown}``: each variant's evidence, for its model card."""
    notes = {}
    for ev in evidence:
        body = _variant_section(ev, base, level="##")
        body[0] = "## Evidence: against the baselines at the same fine-tune budget"
        notes[f"{ev.variant}.{tag}"] = "\n".join(body).rstrip() + "\n\nGenerated by `stresnet report`."
    return notes


# ----------------------------------------------------------------------------- plot

def plot_pareto(evidence: list[Evidence], base: Mapping[str, Any] | None, path: Path) -> Path:
    """Top-1 vs params (log x), one marker per arm kind (mean +/- std over seeds), the base as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for kind, arm_kind in ALL_ARMS.items():
        num, label = arm_kind.num, arm_kind.text
        marker, color = MARKERS[kind]
        xs, ys, errs = [], [], []
        for ev in evidence:
            arm = ev.arms[kind]
            if arm.runs:
                xs.append(arm.runs[0].params / 1e6)
                ys.append(100 * arm.mean())
                errs.append(100 * (arm.std() or 0.0))
        admm = [ev.variant.removeprefix("stresnet18_") for ev in evidence
                if any(r.admm_epochs for r in ev.arms[kind].runs)]
        if admm and kind in ARMS:
            label += f" (ADMM route: {', '.join(admm)})"
        if xs:
            ax.errorbar(xs, ys, yerr=errs, fmt=marker, color=color, capsize=3, label=f"arm {num}: {label}",
                        **({"mfc": "none"} if kind in EXTRA_ARMS else {}))
    for ev in evidence:
        if ev.arms["searched"].runs:
            arm = ev.arms["searched"]
            ax.annotate(ev.variant, (arm.runs[0].params / 1e6, 100 * arm.mean()), textcoords="offset points",
                        xytext=(6, -11), fontsize=7)
    if base:
        ax.axhline(100 * base["top1"], color="k", linestyle="--", linewidth=1,
                   label=f"ResNet-18 base ({base['params'] / 1e6:.2f} M)")
    if not any(ev.runs for ev in evidence):
        ax.text(0.5, 0.5, "no evidence arm has run yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_xscale("log")
    ax.margins(x=0.25)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(  # 2, 3 and 5 of each decade: enough to read, no overlap
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("parameters (M, log scale; sparse indices counted)")
    ax.set_ylabel("top-1 on Imagenette val (%)")
    ax.grid(alpha=0.3, which="both")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
