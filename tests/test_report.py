"""`stresnet report`: evidence tables and pareto.png from recipe results only, byte for byte, honest about gaps.

The fixtures are small results JSONs in the runner's shape (arms -> stages ->
finetune/eval results, a ``reference`` arm for the zoo recipe) written next to
evidence recipes in a temporary folder.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stresnet.zoo.report import ReportError, card_notes, evidence_markdown, load_evidence, plot_pareto

REPO = Path(__file__).resolve().parents[1]
EXPECTED = Path(__file__).parent / "fixtures" / "report_expected.md"
FT = {"epochs": 2, "input_size": 128, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "min_lr": 0.0,
      "momentum": 0.9, "weight_decay": 1e-4, "warmup_epochs": 0.2, "label_smoothing": 0.1, "kd_T": 4.0,
      "kd_alpha": 0.5, "max_steps_per_epoch": None}
BASE = {"model": "resnet18", "top1": 0.885, "top5": 0.98, "images": 2000, "params": 11181642, "macs": 592188416,
        "flash_bytes": 11210512}
HW = {"device": "cpu", "threads": 2, "cores": 2}


def _arm(top1: float, params: int, seed: int = 0, seconds: float = 480.0, teacher: bool = True,
         reference: bool = False, **config) -> dict:
    tune = {"id": "finetune", "type": "finetune", "params": {} if teacher else {"teacher": "none"},
            "result": {"epochs": 2, "seconds": seconds, "config": {**FT, "seed": seed, **config}}}
    final = {"top1": top1, "top5": 0.99, "images": 2000, "params": params, "macs": params * 20,
             "flash_bytes": params + 4096}
    stages = [{"id": "plan", "type": "plan", "params": {}, "result": {}}, tune,
              {"id": "eval", "type": "eval", "params": {}, "result": final}]
    if reference:  # arm 1: the zoo recipe's own stages, quoted by a reference stage
        stages = [{"id": "reference", "type": "reference", "params": {},
                   "result": {"final": final, "stages": stages, "base": BASE, "hardware": HW}}]
    return {"stages": stages, "final": final}


def _recipe(name: str, variant: str, arms: list[str], note: str = "") -> dict:
    evidence = {"variant": variant, **({"note": note} if note else {})}
    return {"format": "stresnet-recipe/1", "name": name, "evidence": evidence, "data": "x",
            "base": {"model": "resnet18"}, "arms": {a: [{"eval": {}}] for a in arms}}


def _fixture(root: Path, lr_16x_uniform: float = 0.01) -> tuple[Path, Path]:
    recipes, results = root / "recipes", root / "results"
    recipes.mkdir(parents=True)
    results.mkdir()
    kinds = ["searched", "uniform", "scratch_kd", "scratch", "pruned"]
    files = {
        "evidence_8x": (_recipe("evidence_8x", "stresnet18_8x", kinds, note="Why arm 2 wins: a fixture."), {
            "searched": _arm(0.870, 1397491, reference=True), "uniform": _arm(0.880, 1454787),
            "scratch_kd": _arm(0.500, 1397491), "scratch": _arm(0.400, 1397491, teacher=False, kd_alpha=0.0)}),
        "evidence_16x": (_recipe("evidence_16x", "stresnet18_16x", kinds), {
            "searched": _arm(0.860, 696819, reference=True), "uniform": _arm(0.840, 737003, lr=lr_16x_uniform),
            "scratch_kd": _arm(0.450, 696819), "scratch": _arm(0.350, 696819, teacher=False, kd_alpha=0.0),
            "pruned": _arm(0.800, 696820)}),
        "evidence_16x_seeds": (_recipe("evidence_16x_seeds", "stresnet18_16x",
                                       ["searched_seed1", "uniform_seed1", "searched_seed2", "uniform_seed2"]), {
            "searched_seed1": _arm(0.870, 696819, seed=1), "uniform_seed1": _arm(0.850, 737003, seed=1),
            "searched_seed2": _arm(0.880, 696819, seed=2)}),  # uniform_seed2 has not run
        "evidence_pico": (_recipe("evidence_pico", "stresnet_pico", kinds), None),  # nothing has run
    }
    for name, (recipe, arms) in files.items():
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        if arms is not None:
            (results / f"{name}.json").write_text(json.dumps({"name": name, "hardware": HW, "arms": arms}))
    return recipes, results


def _render(recipes: Path, results: Path, out: Path) -> tuple[str, bytes]:
    evidence, base = load_evidence(recipes, results)
    plot_pareto(evidence, base, out / "pareto.png")
    return evidence_markdown(evidence, base), (out / "pareto.png").read_bytes()


def _section(md: str, variant: str) -> str:
    return md.split(f"### {variant}\n", 1)[1].split("\n### ", 1)[0]


def test_regenerates_byte_for_byte_and_matches_the_expected_fixture(tmp_path):
    recipes, results = _fixture(tmp_path / "in")
    md1, png1 = _render(recipes, results, tmp_path / "a")
    md2, png2 = _render(recipes, results, tmp_path / "b")
    assert md1 == md2 and png1 == png2
    assert png1[:8] == b"\x89PNG\r\n\x1a\n" and len(png1) > 10_000
    assert md1 == EXPECTED.read_text()


def test_committed_zoo_cards_are_the_report_of_the_committed_results(regenerated_report):
    """`stresnet report` on `recipes/` and `recipes/results/` gives the committed `zoo_cards/`, every file
    byte for byte (cards, index, both plots): no committed card is stale or edited by hand."""
    committed, fresh = REPO / "zoo_cards", regenerated_report / "zoo_cards"
    names = sorted(p.name for p in committed.iterdir())
    assert names == sorted(p.name for p in fresh.iterdir())
    differ = [n for n in names if (committed / n).read_bytes() != (fresh / n).read_bytes()]
    assert not differ, f"stale in zoo_cards/ (run `stresnet report` and commit): {differ}"


def test_arms_without_results_are_shown_as_not_run(tmp_path):
    md, _ = _render(*_fixture(tmp_path / "in"), tmp_path)
    eight = _section(md, "stresnet18_8x")
    assert "| 5 | dense ResNet-18 magnitude-pruned to arm 1's stored params, KD | not run |" in eight
    assert "Arm 5 (dense ResNet-18 magnitude-pruned to arm 1's stored params, KD) has not run" in eight
    pico = _section(md, "stresnet_pico")
    assert pico.count("| not run |") == 5 and "Arm 1 has not run: no comparison is made." in pico
    # seeds 0 and 1 of 16x arm 2 ran, seed 2 did not: pooled over what ran, the gap named
    assert "84.50 ± 0.71 (n=2), 1 not run" in _section(md, "stresnet18_16x")


def test_arm_1_losing_is_said_plainly_and_seed_spread_is_reported(tmp_path):
    md, _ = _render(*_fixture(tmp_path / "in"), tmp_path)
    eight = _section(md, "stresnet18_8x")
    assert "**Arm 1 does not beat arm 2** (uniform ranks at >= arm 1's params, decomposed, KD): arm 2 is ahead " \
           "by 1.00 pt (20 images); one seed each, so no seed spread to judge noise by." in eight
    assert "Arm 1 beats arm 3 (arm 1's architecture, random init, KD) by 37.00 pt (740 images); one seed each, so no seed spread to judge noise by." in eight
    assert "Note: Why arm 2 wins: a fixture." in eight  # the recipe's words on why, under the verdicts
    sixteen = _section(md, "stresnet18_16x")
    assert "| 87.00 ± 1.00 (n=3) | -1.50 |" in sixteen  # mean of 86/87/88, sample std, vs the 88.5 base
    assert "Arm 1 beats arm 2 (uniform ranks at >= arm 1's params, decomposed, KD) by 2.50 pt (50 images); " \
           "seed std: arm 1 1.00 pt (n=3), arm 2 0.71 pt (n=2); paired by fine-tune seed (0, 1): +2.00, +2.00 pt, " \
           "95 % interval of the mean +2.00 to +2.00 pt (excludes 0)." in sixteen
    assert "| 0, 1, 2 |" in sixteen
    assert "Budget, the same for the 8 runs above" in sixteen and "(arm 4: no teacher" in sixteen
    notes = card_notes(*load_evidence(tmp_path / "in" / "recipes", tmp_path / "in" / "results"))
    assert set(notes) == {f"{v}.imagenette" for v in ("stresnet18_8x", "stresnet18_16x", "stresnet_pico")}
    assert "**Arm 1 does not beat arm 2**" in notes["stresnet18_8x.imagenette"]
    assert "2 epochs at 128 px" in notes["stresnet18_16x.imagenette"]


def test_a_gap_inside_the_seed_to_seed_noise_is_said_to_be(tmp_path):
    """Arms fine-tuned with the same seeds are also compared seed by seed: per-seed differences that change sign
    (+1, -1, +0.5 pt: mean 0.17, sample std 1.04) give a 95 % t-interval that contains 0, however far apart the
    pooled means are; a seed only one arm ran (seed 3 here) is left out of the pairing."""
    recipes, results = tmp_path / "recipes", tmp_path / "results"
    recipes.mkdir()
    results.mkdir()
    searched, uniform = [0.870, 0.860, 0.875, 0.900], [0.860, 0.870, 0.870]
    arms = {"searched": _arm(searched[0], 696819, reference=True),
            **{f"searched_seed{s}": _arm(searched[s], 696819, seed=s) for s in (1, 2, 3)},
            "uniform": _arm(uniform[0], 737003),
            **{f"uniform_seed{s}": _arm(uniform[s], 737003, seed=s) for s in (1, 2)}}
    (recipes / "evidence_16x.yaml").write_text(yaml.safe_dump(_recipe("evidence_16x", "stresnet18_16x", list(arms))))
    (results / "evidence_16x.json").write_text(json.dumps({"name": "evidence_16x", "hardware": HW, "arms": arms}))
    md, _ = _render(recipes, results, tmp_path)
    line = next(x for x in md.splitlines() if x.startswith("- Arm 1 beats arm 2 "))
    assert line.endswith("; paired by fine-tune seed (0, 1, 2): +1.00, -1.00, +0.50 pt, 95 % interval of the mean "
                         "-2.42 to +2.75 pt (contains 0: the gap is inside seed noise).")


def test_a_different_budget_is_flagged(tmp_path):
    md, _ = _render(*_fixture(tmp_path / "in", lr_16x_uniform=0.05), tmp_path)
    sixteen = _section(md, "stresnet18_16x")
    assert "**The budgets are not identical**: lr is 0.05 in evidence_16x:uniform" in sixteen
    assert "Budget, the same" not in sixteen


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    recipes, results = _fixture(tmp_path / "in")
    (results / "evidence_8x.json").write_text('{"arms": {')
    with pytest.raises(ReportError, match="evidence_8x.json: not valid JSON"):
        load_evidence(recipes, results)
    proc = subprocess.run([sys.executable, "-m", "stresnet.cli", "report", "--recipes", str(recipes), "--results",
                           str(results), "--out", str(tmp_path / "cards")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "evidence_8x.json" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "cards").exists()
    (recipes / "evidence_zz.yaml").write_text(yaml.safe_dump(_recipe("evidence_zz", "x", ["lottery"])))
    (results / "evidence_8x.json").unlink()
    with pytest.raises(ReportError, match="evidence_zz.yaml: arm 'lottery'"):
        load_evidence(recipes, results)
    with pytest.raises(ReportError, match="no such results folder"):
        load_evidence(recipes, tmp_path / "absent")


def _admm_arm(top1: float, params: int, admm_epochs: int = 1, tune_epochs: int = 1) -> dict:
    """An ADMM-route arm: ADMM on the dense base, decompose, fine-tune; both training stages count as budget."""
    row = _arm(top1, params, seconds=300.0, epochs=admm_epochs + tune_epochs)
    tune = row["stages"][1]
    tune["result"]["epochs"] = tune_epochs
    tune["result"]["config"]["epochs"] = tune_epochs
    admm = {"id": "admm", "type": "admm", "params": {}, "result": {"epochs": admm_epochs, "seconds": 600.0}}
    row["stages"].insert(1, admm)
    return row


def test_admm_arms_appear_only_where_listed_and_count_their_admm_epochs(tmp_path):
    recipes, results = _fixture(tmp_path / "in")
    extra = ["searched_admm", "uniform_admm"]
    recipe = _recipe("evidence_8x", "stresnet18_8x", ["searched", "uniform", "scratch_kd", "scratch", "pruned"] + extra)
    (recipes / "evidence_8x.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    data = json.loads((results / "evidence_8x.json").read_text())
    data["arms"]["searched_admm"] = _admm_arm(0.882, 1397491)
    (results / "evidence_8x.json").write_text(json.dumps(data))
    md, _ = _render(recipes, results, tmp_path)
    eight = _section(md, "stresnet18_8x")
    row = next(line for line in eight.splitlines() if line.startswith("| 1b |"))
    assert "| 88.20 | -0.30 |" in row and "| 2 | 15.0 | 0 |" in row  # 1 ADMM + 1 fine-tune epoch; 600 + 300 s
    assert "| 2b | arm 2's plan by the same ADMM route | not run |" in eight
    assert "Budget, the same for the 5 runs above" in eight  # 1 + 1 epochs is the same 2-epoch budget
    assert "arm 1b spends 1 of those epochs on ADMM of the dense base" in eight
    assert "- **Arm 1 does not beat arm 1b** (arm 1's plan, ADMM on the dense base for part of the epochs, then " \
           "decomposed, KD): arm 1b is ahead by 1.20 pt (24 images)" in eight
    assert "| 1b |" not in _section(md, "stresnet18_16x")  # not listed there: no row at all
    data["arms"]["uniform_admm"] = _admm_arm(0.885, 1408627)
    (results / "evidence_8x.json").write_text(json.dumps(data))
    eight = _section(_render(recipes, results, tmp_path)[0], "stresnet18_8x")
    assert "**Arm 1b does not beat arm 2b** (arm 2's plan by the same ADMM route): arm 2b is ahead by 0.30 pt" in eight
    assert "arms 1b, 2b spend 1 of those epochs" in eight
    data["arms"]["uniform_admm"] = _admm_arm(0.885, 1408627, admm_epochs=2)  # 3 epochs in all: flagged
    (results / "evidence_8x.json").write_text(json.dumps(data))
    eight = _section(_render(recipes, results, tmp_path)[0], "stresnet18_8x")
    assert "**The budgets are not identical**: epochs is 3 in evidence_8x:uniform_admm" in eight


def test_where_arm_1_took_the_admm_route_it_says_so_and_is_compared_with_the_direct_route(tmp_path):
    recipes, results = _fixture(tmp_path / "in")
    kinds = ["searched", "uniform", "scratch_kd", "scratch", "pruned", "searched_direct", "uniform_direct"]
    (recipes / "evidence_8x.yaml").write_text(yaml.safe_dump(_recipe("evidence_8x", "stresnet18_8x", kinds)))
    data = json.loads((results / "evidence_8x.json").read_text())
    data["arms"].update(searched=_admm_arm(0.881, 1397491), uniform=_admm_arm(0.868, 1408627),
                        searched_direct=_arm(0.874, 1397491), uniform_direct=_arm(0.872, 1408627))
    (results / "evidence_8x.json").write_text(json.dumps(data))
    eight = _section(_render(recipes, results, tmp_path)[0], "stresnet18_8x")
    assert "| 1 | the zoo plan, decomposed from the base, KD, by the ADMM route" in eight
    assert "| 3 | arm 1's architecture, random init, KD |" in eight  # no route note where no ADMM ran
    assert "- Arm 1 beats arm 1d (arm 1's plan, decomposed from the base directly (no ADMM), KD for all the " \
           "epochs) by 0.70 pt (14 images)" in eight
    assert "- Arm 1d beats arm 2d" in eight and "| 1b |" not in eight
    assert "- Arm 1 beats arm 2d (arm 2's plan, decomposed directly (no ADMM), KD for all the epochs) " \
           "by 0.90 pt" in eight
    assert "arms 1, 2 spend 1 of those epochs on ADMM" in eight and "Budget, the same for the 6 runs" in eight

