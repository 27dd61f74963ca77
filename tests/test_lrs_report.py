"""The LR+S comparison's report: arms read back from a results JSON, the verdict in images, the plot."""
from __future__ import annotations

import json
from pathlib import Path

from stresnet.zoo.lrs_report import (LATENCY_FILE, RESULTS_FILE, ZOO_NAMES, LrsArm, card_notes, chosen, goal, load_lrs,
                                     lrs_markdown, plot_lrs, verdict)


def _arm(zero: float, final: float | None, params: int) -> dict:
    stages = [{"id": "zero_shot", "type": "eval", "result": {"top1": zero, "params": params, "macs": 1, "images": 435}}]
    if final is not None:
        stages.append({"id": "eval", "type": "eval", "result": {"top1": final, "params": params, "macs": 1,
                                                                "images": 435}})
    return {"stages": stages}


def test_the_report_reads_every_arm_and_says_where_lrs_does_not_win(tmp_path: Path) -> None:
    results = {"arms": {"lowrank_1.5x": _arm(0.40, 0.70, 3_000_000), "prune_1.5x": _arm(0.0, 0.60, 3_000_100),
                        "lrs_1.5x": _arm(0.10, 0.71, 2_999_000), "lowrank_2x": _arm(0.05, 0.5, 2_300_000)},
               "base_ilsvrc-val": {"params": 4_652_008, "top1": 0.7448, "images": 435}}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results))
    found, dense = load_lrs(tmp_path)
    assert set(found) == {"1.5x", "2x"} and set(found["1.5x"]) == {"lowrank", "prune", "lrs"}
    assert found["1.5x"]["lrs"].zero_shot == 0.10 and found["1.5x"]["lrs"].top1 == 0.71
    text = lrs_markdown(found, dense)
    assert "4,652,008 params, 74.48 %" in text and "| 1.5x | LR+S (searched Tucker-2 + sparse) | 2,999,000 |" in text
    assert "1.5x: LR+S does NOT beat both (+4 images vs lowrank, +48 images vs prune" in text  # 4 images: a tie
    assert "2x: not every arm has finished" in text
    assert plot_lrs(found, dense, tmp_path / "p.png").stat().st_size > 0


def test_lrs_wins_only_by_more_than_noise() -> None:
    def arm(correct: int) -> LrsArm:
        return LrsArm(params=1, macs=1, zero_shot=None, top1=correct / 435, images=435)

    assert "beats both" in verdict("2x", {"lrs": arm(300), "lowrank": arm(290), "prune": arm(200)})
    assert "does NOT" in verdict("2x", {"lrs": arm(300), "lowrank": arm(296), "prune": arm(200)})
    assert load_lrs(Path("/nonexistent")) == ({}, None)


def _tuned(zero: float, final: float, selection: float, params: int, published: str | None = None) -> dict:
    arm = _arm(zero, final, params)
    arm["stages"].insert(1, {"id": "finetune", "type": "finetune", "result": {"selection_top1": selection}})
    if published:
        arm["stages"].append({"id": "agreement", "type": "agreement", "result": {"top1_agreement": 0.006}})
        arm["stages"].append({"id": "publish", "type": "publish", "result": {"name": published}})
    return arm


def test_the_published_arm_is_chosen_on_the_selection_split_and_the_goal_is_judged_on_it(tmp_path: Path) -> None:
    """The best after-KD top-1 on the reported images (lowrank here) must not pick the arm: the selection split does."""
    results = {"arms": {"lowrank_2x": _tuned(0.0, 0.72, 0.90, 2_300_000),
                        "prune_2x": _tuned(0.0, 0.70, 0.95, 2_300_100, published="stresnet_lite0_2x.kd_imagenette"),
                        "lrs_2x": _tuned(0.0, 0.60, 0.80, 2_300_050)},
               "base_ilsvrc-val": {"params": 4_652_008, "top1": 0.7448, "images": 435}}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results))
    (tmp_path / LATENCY_FILE).parent.mkdir(parents=True)
    (tmp_path / LATENCY_FILE).write_text(json.dumps({"models": {
        "resnet18": {"onnxruntime": {"median_ms": 9.0}}, "efficientnet_lite0": {"onnxruntime": {"median_ms": 5.5}},
        "/tmp/arms/prune_2x.json": {"onnxruntime": {"median_ms": 5.25}}}}))
    found, dense = load_lrs(tmp_path)
    arms = found["2x"]
    assert chosen(arms) == "prune" and arms["prune"].latency_ms == 5.25 and dense["latency_ms"] == 5.5
    assert goal("2x", arms, dense) == ("2x goal (within 3 pt of dense after KD): met: sparse only (magnitude "
                                       "pruning), the arm chosen on the selection split, 70.00 % vs dense 74.48 % "
                                       "(-4.48 pt). It agrees with the dense model on 0.60 % of the COCO images."
                                       ).replace("met:", "missed:")
    note, = card_notes(found, dense).values()
    assert "selection-split top-1 after KD (95.00 %)" in note and "only 0.60 % of them" in note
    text = lrs_markdown(found, dense)
    assert "| 5.25 | 0.00 | 95.00 | 70.00 | - | 0.60 | `stresnet_lite0_2x.kd_imagenette` |" in text and "5.50 ms" in text
    arms["prune"].selection = None
    assert chosen(arms) is None and goal("2x", arms, dense) is None


def test_the_recipe_publishes_the_arm_the_selection_split_chose() -> None:
    """The committed results pick one arm per budget on the selection split; the recipe's publish stage must sit on
    exactly that arm (a re-run that changes the pick must move it), under the budget's zoo name."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    found, _ = load_lrs(repo / "recipes" / "results")
    recipe = yaml.safe_load((repo / "recipes" / "efficientnet_lite0_lrs.yaml").read_text())
    published = {arm: [s["publish"]["name"] for s in stages if "publish" in s] for arm, stages in recipe["arms"].items()}
    decided = {budget: chosen(arms) for budget, arms in found.items() if chosen(arms)}
    assert decided, "the committed comparison has no finished budget"
    for budget, method in decided.items():
        for other in found[budget]:
            arm = f"{other.removesuffix('_cal')}_{budget}" + ("_cal" if other.endswith("_cal") else "")
            expected = [f"{ZOO_NAMES[budget]}.kd_imagenette"] if other == method else []
            assert published[arm] == expected, arm


def test_calibrated_arms_are_read_as_their_own_rows_and_get_their_own_verdict(tmp_path: Path) -> None:
    """``lrs_2x_cal`` is LR+S at 2x with calibrated decompositions: its own row, a verdict against the calibrated
    low-rank arm (and pruning, which has nothing to calibrate), and a candidate for the published arm."""
    results = {"arms": {"lowrank_2x": _tuned(0.0, 0.52, 0.52, 2_300_000), "prune_2x": _tuned(0.0, 0.05, 0.05, 2_300_100),
                        "lrs_2x": _tuned(0.0, 0.67, 0.64, 2_300_050), "lowrank_2x_cal": _tuned(0.8, 0.88, 0.90, 2_300_010),
                        "lrs_2x_cal": _tuned(0.5, 0.80, 0.85, 2_300_020)},
               "base_ilsvrc-val": {"params": 4_652_008, "top1": 0.7448, "images": 435}}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results))
    found, dense = load_lrs(tmp_path)
    assert set(found) == {"2x"} and set(found["2x"]) == {"lowrank", "prune", "lrs", "lowrank_cal", "lrs_cal"}
    assert chosen(found["2x"]) == "lowrank_cal"
    text = lrs_markdown(found, dense)
    assert "| 2x | LR+S (searched Tucker-2 + sparse, calibrated) | 2,300,020 |" in text
    assert "2x: LR+S beats both" in text
    assert "2x calibrated: LR+S does NOT beat both (-35 images vs lowrank_cal, +326 images vs prune" in text
    assert "met: low-rank only (searched, calibrated)" in goal("2x", found["2x"], dense)
    del results["arms"]["prune_2x"]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results))
    assert chosen(load_lrs(tmp_path)[0]["2x"]) is None  # the three methods first
    no_lrs = {m: a for m, a in found["2x"].items() if m != "lrs_cal"}  # a calibrated low-rank arm alone
    assert verdict("2x", no_lrs, calibrated=True) == "2x calibrated: no calibrated LR+S arm was run; no verdict."
