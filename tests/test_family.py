"""The MCU family built by search (#16): every searched member fits its ST variant's four budgets, and the
two-arm family recipe (ST's ranks, searched) runs end to end, fitting the narrowed stem and publishing each arm."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import timm
import torch
import yaml

from stresnet.recipes import load_recipe, run_recipe
from stresnet.zoo.family import VARIANTS, st_budget

REPO = Path(__file__).resolve().parents[1]
METRICS = {"params": "params", "flash": "flash_bytes", "macs": "macs", "ram": "peak_ram_bytes"}


def test_every_searched_member_fits_all_four_st_budgets_at_1000_classes_224px() -> None:
    """Acceptance 1 of #16, as a user checks it: ``stresnet profile stresnet_<v>_searched --json`` (timm's
    1000-class cfg, 224 px) against ``stresnet profile stresnet_<v>`` (ST's architecture) on all four metrics."""
    names = [f"stresnet_{v}{s}" for v in VARIANTS for s in ("", "_searched")]
    out = subprocess.run([sys.executable, "-m", "stresnet", "profile", *names, "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    profiles = json.loads(out)
    for v in VARIANTS:
        st, searched = profiles[f"stresnet_{v}"], profiles[f"stresnet_{v}_searched"]
        assert st["input_size"] == searched["input_size"] == [3, 224, 224]
        budget = st_budget(v, 1000)
        for metric, key in METRICS.items():
            assert st[key] == budget[metric]  # the budget is ST's own profile
            assert searched[key] <= budget[metric], f"stresnet_{v}_searched: {metric} {searched[key]} > {budget[metric]}"


def test_searched_members_are_timm_models_with_a_1000_class_default_and_an_imagenette_tag() -> None:
    assert {f"stresnet_{v}_searched" for v in VARIANTS} <= set(timm.list_models("stresnet*"))
    model = timm.create_model("stresnet_pico_searched.imagenette").eval()
    assert model.pretrained_cfg["num_classes"] == 10 and model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert timm.create_model("stresnet_pico_searched").num_classes == 1000


def test_family_recipe_searches_fits_the_stem_and_publishes_both_arms(tree, tmp_path, monkeypatch) -> None:
    """recipes/stresnet_pico.yaml's two arms on the tiny tree (random 3-class base, one stem option, 8 calibration
    images, no fine-tune): the searched plan fits pico's budgets, the narrowed stem is fitted (not random), and
    each arm publishes its own name with its own measured top-1."""
    from huggingface_hub import constants

    from stresnet.zoo import models
    from stresnet.zoo.hub import save_weights

    monkeypatch.setenv("STRESNET_WEIGHTS_REGISTRY", str(tmp_path / "weights.json"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    models.weights_registry.cache_clear()
    base = tmp_path / "base.safetensors"
    save_weights(timm.create_model("resnet18", num_classes=3), base)
    shipped = yaml.safe_load((REPO / "recipes" / "stresnet_pico.yaml").read_text())
    for arm in shipped["arms"].values():  # same stages as shipped, shrunk: no fine-tune, tiny calibration
        for stage in arm:
            (kind, params), = stage.items()
            if kind in ("search", "decompose"):
                params["calib"] = 8
            if kind == "search":
                params.update(stems=[{"width": 32, "proj": True}], estimator="mse")
                params.pop("expect_plan")
    recipe = {**shipped, "data": str(tree), "input_size": 32, "base": {**shipped["base"], "num_classes": 3,
                                                                       "checkpoint": str(base)},
              "arms": {a: [s for s in stages if "finetune" not in s] for a, stages in shipped["arms"].items()}}
    path = tmp_path / "stresnet_pico.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    results = run_recipe(load_recipe(path), out_root=tmp_path / "runs", results_path=tmp_path / "r.json",
                         progress=False, log=lambda _: None)
    searched = {s["type"]: s["result"] for s in results["arms"]["searched"]["stages"]}
    trial, = searched["search"]["trials"]
    budget = st_budget("pico", 3)
    assert searched["search"]["chosen_stem"] == "width32+proj"
    assert all(trial["cost"][m] <= budget[m] for m in METRICS), trial
    for arm in ("st", "searched"):
        stages = {s["type"]: s["result"] for s in results["arms"][arm]["stages"]}
        assert stages["decompose"]["stem_init"]["method"] == "fit"
        assert 0.0 <= stages["decompose"]["stem_init"]["zero_shot_top1"] <= 1.0
    registry = json.loads((tmp_path / "weights.json").read_text())
    for name, arm in (("stresnet_pico.imagenette", "st"), ("stresnet_pico_searched.imagenette", "searched")):
        assert registry[name]["metrics"]["top1"] == results["arms"][arm]["final"]["top1"]
    assert registry["stresnet_pico_searched.imagenette"]["metrics"]["params"] <= budget["params"]
    models.weights_registry.cache_clear()


def test_a_searched_name_points_at_its_family_recipe() -> None:
    from stresnet.zoo.models import recipe_path

    assert recipe_path("stresnet_pico_searched.imagenette") == "recipes/stresnet_pico.yaml"
    assert recipe_path("stresnet_pico.imagenette") == "recipes/stresnet_pico.yaml"


def test_the_verdict_counts_images_and_calls_a_few_a_tie() -> None:
    from stresnet.zoo.family_report import NOISE_IMAGES, FamilyArm, verdict

    def arm(correct: int) -> FamilyArm:
        return FamilyArm(top1=correct / 1982, images=1982, zero_shot=None, stem_zero_shot=None, epochs=2, stem="base")

    assert "beats ST's ranks by" in verdict("v", {"st": arm(1500), "searched": arm(1520)})
    assert "20 val images" in verdict("v", {"st": arm(1500), "searched": arm(1520)})
    assert "a tie" in verdict("v", {"st": arm(1500), "searched": arm(1500 + NOISE_IMAGES)})
    assert "does NOT beat" in verdict("v", {"st": arm(1520), "searched": arm(1500)})
    led = FamilyArm(top1=1500 / 1982, images=1982, zero_shot=1700 / 1982, stem_zero_shot=None, epochs=2, stem="base")
    trailed = FamilyArm(top1=1520 / 1982, images=1982, zero_shot=1600 / 1982, stem_zero_shot=None, epochs=2, stem="base")
    assert "lowered the searched model below its own zero-shot" in verdict("v", {"st": trailed, "searched": led})
    assert "only the st arm" in verdict("v", {"st": arm(1500)})


def test_a_kept_start_reads_as_no_fine_tune_with_what_it_was_chosen_from() -> None:
    """An arm whose selection split preferred the decomposed start to every fine-tune: 0 epochs, no lr, and the
    card's lr column names the candidates."""
    from stresnet.zoo.family_report import _arm, _lr

    start = "start (no fine-tune)"
    arm = {"final": {"top1": 0.87, "images": 1982}, "stages": [
        {"type": "decompose", "result": {"zero_shot_top1": 0.87}},
        {"type": "finetune", "result": {"selection_top1": 0.99, "epochs": 0, "chosen": start, "candidates": [
            {"values": {"lr": 0.01}, "config": {"lr": 0.01, "train_on": "fit"}, "selection_top1": 0.98},
            {"values": {"lr": 0.001}, "config": {"lr": 0.001, "train_on": "fit"}, "selection_top1": 0.95},
            {"values": start, "selection_top1": 0.99, "epochs": 0}]}}]}
    read = _arm(arm)
    assert read.start_kept and read.epochs == 0 and read.lr is None and read.train_on == "fit"
    assert _lr(read) == "none: start kept (of 0.01, 0.001, no fine-tune)"
    arm["stages"][1]["result"].update(chosen={"lr": 0.01}, config={"lr": 0.01, "train_on": "fit"}, epochs=2)
    assert _lr(_arm(arm)) == "0.01 (of 0.01, 0.001, no fine-tune)"
