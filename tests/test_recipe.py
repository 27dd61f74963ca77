"""Recipes as users run them: YAML -> stages -> results JSON, resume, refusals, every shipped recipe parses.

The chain runs on the tiny ImageFolder of ``conftest.tree`` with timm
``resnet18`` (3 classes) at 32 px: base training from random init, CompressNAS
search, decomposition, KD fine-tune, eval. On torch's default threads (not
conftest's ``one_thread``): no test here compares bits with another process, and
the searches' float64 moments and eigendecompositions take a sixth less time on two.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stresnet.recipes import RecipeError, load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0.5, "workers": 0, "seed": 0}


def _write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _chain(tree: Path) -> dict:
    return {"format": "stresnet-recipe/1", "name": "tiny", "data": str(tree), "input_size": 32,
            "base": {"model": "resnet18", "num_classes": 3},
            "stages": [{"train_base": {**TRAIN, "lr": 0.05, "kd_alpha": 0.0}},
                       {"search": {"budget": "4x", "step": 16, "calib": 12}},
                       {"decompose": {}},
                       {"finetune": dict(TRAIN)},
                       {"eval": {}}]}


@pytest.fixture(scope="module")
def chain(tree, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    path = _write(tmp, _chain(tree))
    results = run_recipe(load_recipe(path), out_root=tmp / "runs", results_path=tmp / "results.json",
                         progress=False, log=lambda _: None)
    return tmp, path, results


def test_chain_runs_every_stage_and_writes_results(chain):
    tmp, _, results = chain
    assert [s["type"] for s in results["stages"]] == ["train_base", "search", "decompose", "finetune", "eval"]
    on_disk = json.loads((tmp / "results.json").read_text())
    assert on_disk["final"] == results["final"]
    final, base = results["final"], results["base"]
    # the 4x search really compressed the trained base, and eval measured both on the same val split
    assert final["params"] < base["params"] / 3
    assert final["compression"]["params"] == pytest.approx(base["params"] / final["params"])
    assert final["images"] == base["images"] == 12
    # the fine-tune started from the decomposition of the base trained in stage 1, and saved its plan with it
    ft = tmp / "runs" / "tiny" / "finetune"
    assert (ft / "model.safetensors").is_file() and (ft / "plan.json").is_file()
    assert json.loads((ft / "plan.json").read_text())["layers"]
    assert results["stages"][0]["result"]["epochs"] == 1


def test_rerun_refuses_to_overwrite_and_resume_skips_finished_stages(chain):
    tmp, path, results = chain
    with pytest.raises(RecipeError, match="--resume"):
        run_recipe(load_recipe(path), out_root=tmp / "runs", results_path=tmp / "again.json", progress=False,
                   log=lambda _: None)
    said: list[str] = []
    again = run_recipe(load_recipe(path), out_root=tmp / "runs", results_path=tmp / "again.json", resume=True,
                       progress=False, log=said.append)
    assert sum("skipped" in line for line in said) == 5
    assert again["final"] == results["final"]
    assert again["base"] == results["base"]  # every eval skipped: the base row comes back from the eval's result


def test_a_killed_finetune_stage_continues_on_resume(chain, tree, tmp_path):
    """Delete the fine-tune's stage.json (as if killed after its last checkpoint): resume re-enters the engine,
    which finds the finished epoch in last.pt and does not train again."""
    tmp, path, results = chain
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tmp / "runs", runs)
    (runs / "tiny" / "finetune" / "stage.json").unlink()
    (runs / "tiny" / "eval" / "stage.json").unlink()
    again = run_recipe(load_recipe(path), out_root=runs, results_path=tmp_path / "r.json", resume=True,
                       progress=False, log=lambda _: None)
    ft = [s["result"] for s in again["stages"] if s["type"] == "finetune"][0]
    assert ft["val_top1"] == [s["result"] for s in results["stages"] if s["type"] == "finetune"][0]["val_top1"]
    assert again["final"]["top1"] == results["final"]["top1"]


def test_overrides_and_variables(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_DATA", str(tree))
    recipe = _chain(tree)
    recipe["data"] = "${env:TINY_DATA}"
    path = _write(tmp_path, recipe)
    loaded = load_recipe(path, ["input_size=48", "base.num_classes=5"])
    assert loaded["data"] == str(tree) and loaded["input_size"] == 48 and loaded["base"]["num_classes"] == 5
    monkeypatch.delenv("TINY_DATA")
    with pytest.raises(RecipeError, match="TINY_DATA"):
        load_recipe(path)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["stages"].append({"distill": {}}), "unknown stage 'distill'"),
    (lambda r: r["stages"][3]["finetune"].update(epoch=3), "unknown training option 'epoch'"),
    (lambda r: r["stages"][3]["finetune"].update(epochs=0), "epochs must be >= 1"),
    (lambda r: r.pop("data"), "missing required field 'data'"),
    (lambda r: r["stages"].append({"eval": {}}), "stage id 'eval' used twice"),
    (lambda r: r.update(task="segment"), "unknown task 'segment' \\(known: classify, detect\\)"),
    (lambda r: r["stages"][3]["finetune"].update(choose={"lr": [0.1]}), "choose needs train_on: fit"),
    (lambda r: r["stages"][3]["finetune"].update(train_on="fit", choose={"lr": []}), "choose must map"),
    (lambda r: r["stages"][3]["finetune"].update(train_on="fit", choose={"lrr": [0.1]}),
     "unknown training option 'lrr'"),
    (lambda r: r["stages"][3]["finetune"].update(train_on="selection"), "train_on must be one of all, fit"),
    (lambda r: r["stages"][3]["finetune"].update(compare_start=True), "compare_start needs choose"),
])
def test_bad_recipes_fail_with_one_line_naming_the_field(tree, tmp_path, edit, message):
    recipe = _chain(tree)
    edit(recipe)
    with pytest.raises(RecipeError, match=message):
        load_recipe(_write(tmp_path, recipe))


def test_stage_order_errors_name_the_stage(tree, tmp_path):
    recipe = _chain(tree)
    recipe["stages"] = [{"finetune": dict(TRAIN)}]
    with pytest.raises(RecipeError, match="stage finetune: needs the compressed model"):
        run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                   results_path=tmp_path / "x.json", progress=False, log=lambda _: None)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: /nowhere\nbase: {model: resnet18}\nstages:\n  - finetune: {epochs: two}\n")
    proc = subprocess.run([sys.executable, "-m", "stresnet.cli", "recipe", "run", str(bad)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "finetune" in proc.stderr and "Traceback" not in proc.stderr


def test_a_recipe_that_extends_another_states_only_what_differs(tmp_path):
    """``extends``: mappings merge key by key (base.checkpoint replaced, base.model kept), lists replace."""
    (tmp_path / "first.yaml").write_text("name: first\ndata: /d\nbase: {model: resnet18, num_classes: 10, "
                                         "checkpoint: a.safetensors}\nstages:\n  - eval: {}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "second.yaml").write_text("extends: ../first.yaml\nname: second\n"
                                                  "base: {checkpoint: b.safetensors}\nstages:\n  - plan: {}\n")
    recipe = load_recipe(tmp_path / "sub" / "second.yaml")
    assert recipe["name"] == "second" and recipe["data"] == "/d"
    assert recipe["base"] == {"model": "resnet18", "num_classes": 10, "checkpoint": "b.safetensors"}
    assert recipe["stages"] == [{"plan": {}}] and "extends" not in recipe
    assert load_recipe(tmp_path / "first.yaml")["base"]["checkpoint"] == "a.safetensors"  # the original unchanged


@pytest.mark.parametrize("parent, message", [("gone.yaml", "which does not exist"), ("loop.yaml", "extends it back")])
def test_a_broken_extends_is_one_line(tmp_path, parent, message):
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nname: loop\n")
    (tmp_path / "child.yaml").write_text(f"extends: {parent}\nname: child\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "child.yaml")


def test_a_missing_base_checkpoint_stops_the_run_before_any_stage(tree, tmp_path):
    """A recipe whose base another recipe makes (select_8x_fitbase) loads before that base exists; run too early,
    it says so in one line and writes nothing, instead of failing after its first stages."""
    recipe = tmp_path / "early.yaml"
    recipe.write_text(f"name: early\ndata: {tree}\nbase: {{model: resnet18, num_classes: 3, checkpoint: "
                      f"{tmp_path / 'later.safetensors'}}}\nstages:\n  - plan: {{uniform: {{step: 4}}}}\n")
    proc = subprocess.run([sys.executable, "-m", "stresnet.cli", "recipe", "run", str(recipe), "--out",
                           str(tmp_path / "runs"), "--results", str(tmp_path / "early.json")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "base.checkpoint" in proc.stderr and "later.safetensors" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "early.json").exists()


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/data/imagenet")
    monkeypatch.setenv("COCO_ROOT", "/data/coco")  # the full-COCO detect recipes
    monkeypatch.setenv("LITE0_CHECKPOINT", "lite0.safetensors")  # the imported EfficientNet-Lite0
    recipe = load_recipe(path)
    assert recipe["name"] == path.stem  # results land in recipes/results/<file stem>.json


def _random_base(tmp: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp / "base.safetensors"
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(path))
    return path


def test_method_arms_admm_lrs_prune_share_one_budget(tree, tmp_path):
    """The comparison recipes' shape on the tiny tree: ADMM reports both zero-shot numbers; LR+S and pruning
    land on the Tucker plan's parameter count (sparse indices counted)."""
    from stresnet.cost import profile
    from stresnet.plan import Plan, compress
    import timm

    plan = str(REPO / "stresnet/zoo/plans/stresnet18_8x.json")
    short = {**TRAIN, "max_steps_per_epoch": 2}
    sparsity = {"start_density": 1.0, "end": 0.5, "update_every": 1}
    recipe = {"name": "arms", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3, "checkpoint": str(_random_base(tmp_path))},
              "arms": {"admm": [{"plan": {"file": plan}}, {"admm": {**short, "rho": 0.1, "updates_per_epoch": 2}},
                                {"decompose": {"compare_base": True}}, {"finetune": dict(short)}, {"eval": {}}],
                       "lrs": [{"plan": {"file": plan}}, {"lrs_plan": {"method": "lrs", "fraction": 0.25}},
                               {"decompose": {}}, {"finetune": {**short, "sparsity": sparsity}}, {"eval": {}}],
                       "prune": [{"plan": {"file": plan}}, {"lrs_plan": {"method": "prune"}},
                                 {"decompose": {}}, {"finetune": {**short, "sparsity": sparsity}}, {"eval": {}}]}}
    results = run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                         results_path=tmp_path / "arms.json", progress=False, log=lambda _: None)
    arms = results["arms"]
    admm = {s["id"]: s["result"] for s in arms["admm"]["stages"]}
    assert {"zero_shot_top1", "base_zero_shot_top1"} <= set(admm["decompose"])
    assert admm["admm"]["admm"]["distance_after"] < admm["admm"]["admm"]["distance_before"]
    tucker = profile(compress(timm.create_model("resnet18", num_classes=3), Plan.load(plan)), (3, 32, 32)).params
    for arm in ("lrs", "prune"):
        assert arms[arm]["final"]["params"] == pytest.approx(tucker, rel=1e-3), arm
    assert arms["lrs"]["final"]["params"] < results["base"]["params"] / 7


def test_admm_command_line(tree, tmp_path):
    out = tmp_path / "admm_cli"
    proc = subprocess.run(
        [sys.executable, "-m", "stresnet.cli", "admm", "--checkpoint", str(_random_base(tmp_path)), "--num-classes", "3",
         "--data", str(tree), "--plan", str(REPO / "stresnet/zoo/plans/stresnet18_8x.json"), "--out", str(out),
         "--input-size", "32", "--batch-size", "8", "--max-steps-per-epoch", "1", "--rho", "0.1", "--quiet",
         "--device", "cpu"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "decomposing the original base" in proc.stdout
    assert json.loads((out / "results.json").read_text())["final"]["params"] > 0


def test_imagenet_recipe_runs_end_to_end_on_a_tiny_tree(tree, tmp_path, monkeypatch):
    """recipes/stresnet18_8x_in1k.yaml as shipped, pointed at a tiny tree and shrunk by --set, down to publish
    (registry and Hub cache redirected to tmp)."""
    from huggingface_hub import constants

    from stresnet.zoo import models

    monkeypatch.setenv("STRESNET_WEIGHTS_REGISTRY", str(tmp_path / "weights.json"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    models.weights_registry.cache_clear()
    sets = [f"data={tree}", "input_size=32", "base.pretrained=false", "stages.0.search.calib=12",
            "stages.2.finetune.epochs=1", "stages.2.finetune.batch_size=8", "stages.2.finetune.workers=0"]
    recipe = load_recipe(REPO / "recipes" / "stresnet18_8x_in1k.yaml", sets)
    results = run_recipe(recipe, out_root=tmp_path / "runs", results_path=tmp_path / "in1k.json", progress=False,
                         log=lambda _: None)
    published = results["stages"][-1]["result"]
    assert published["name"] == "stresnet18_8x.in1k" and Path(published["cache_snapshot"]).is_dir()
    assert json.loads((tmp_path / "weights.json").read_text())["stresnet18_8x.in1k"]["metrics"]["top1"] == \
        results["final"]["top1"]
    models.weights_registry.cache_clear()
    with pytest.raises(RecipeError, match="not an index"):
        load_recipe(REPO / "recipes" / "stresnet18_8x_in1k.yaml", ["stages.9.eval={}"] + sets)


def test_recipe_under_torchrun_two_processes(tree, tmp_path):
    """`--nproc 2` relaunches the command under torchrun: training stages run on both ranks (gloo on CPU), the
    others on rank 0, and the results say world_size 2."""
    import os

    recipe = {"name": "ddp", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3, "checkpoint": str(_random_base(tmp_path))},
              "stages": [{"plan": {"file": str(REPO / "stresnet/zoo/plans/stresnet18_8x.json")}}, {"decompose": {}},
                         {"finetune": {**TRAIN, "batch_size": 4, "max_steps_per_epoch": 2}}, {"eval": {}}]}
    path = _write(tmp_path, recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stresnet.cli", "recipe", "run", str(path), "--nproc", "2",
                           "--device", "cpu", "--quiet", "--out", str(tmp_path / "runs"),
                           "--results", str(tmp_path / "ddp.json")], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "ddp.json").read_text())
    assert results["world_size"] == 2
    ft = [s["result"] for s in results["stages"] if s["type"] == "finetune"][0]
    assert ft["world_size"] == 2 and ft["epochs"] == 1 and results["final"]["images"] == 12


def test_plan_stage_takes_family_variants_and_names_a_bad_one(tree, tmp_path):
    base = {"model": "resnet18", "num_classes": 3}
    for variant in ("stresnet_pico", "nano"):
        recipe = {"name": f"p_{variant}", "data": str(tree), "input_size": 32, "base": base,
                  "stages": [{"plan": {"variant": variant}}]}
        run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                   results_path=tmp_path / f"{variant}.json", progress=False, log=lambda _: None)
        plan = json.loads((tmp_path / "runs" / f"p_{variant}" / "plan" / "plan.json").read_text())
        assert plan["surgery"]["stem"]["width"] > 0 and plan["layers"]
    recipe = {"name": "p_bad", "data": str(tree), "base": base, "stages": [{"plan": {"variant": "femto"}}]}
    with pytest.raises(RecipeError, match="femto"):
        run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs", results_path=tmp_path / "b.json",
                   progress=False, log=lambda _: None)


def test_evidence_arms_uniform_scratch_and_dense_pruning_on_a_tiny_tree(tree, tmp_path, monkeypatch):
    """The five arms of recipes/evidence_*.yaml on the tiny tree: the uniform plan holds at least the searched
    plan's params, pruning of the dense base lands on them, the scratch arms start from one seeded random init
    (not the decomposition), the no-KD arm never runs the teacher, and the report reads every arm back."""
    import stresnet.train.engine as engine
    from safetensors.torch import load_file
    from stresnet.zoo.report import ARMS, evidence_markdown, load_evidence

    plan = str(REPO / "stresnet/zoo/plans/stresnet18_16x.json")
    ft = {**TRAIN, "max_steps_per_epoch": 2}
    recipe = {"name": "evidence_tiny", "evidence": {"variant": "tiny_16x"}, "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3, "checkpoint": str(_random_base(tmp_path))},
              "arms": {"searched": [{"plan": {"file": plan}}, {"decompose": {}}, {"finetune": ft}, {"eval": {}}],
                       "uniform": [{"plan": {"file": plan}}, {"plan": {"id": "uniform_plan", "uniform": {"step": 4}}},
                                   {"decompose": {}}, {"finetune": ft}, {"eval": {}}],
                       "scratch_kd": [{"plan": {"file": plan}}, {"reinit": {"seed": 3}}, {"finetune": ft},
                                      {"eval": {}}],
                       "scratch": [{"plan": {"file": plan}}, {"reinit": {"seed": 3}},
                                   {"finetune": {**ft, "teacher": "none", "kd_alpha": 0.0}}, {"eval": {}}],
                       "pruned": [{"plan": {"file": plan}}, {"lrs_plan": {"method": "prune", "over": "base"}},
                                  {"decompose": {}},
                                  {"finetune": {**ft, "sparsity": {"start_density": 1.0, "end": 0.5,
                                                                   "update_every": 1}}},
                                  {"eval": {}}]}}
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    teacher_logits: dict[str, list[bool]] = {}
    current = {"arm": ""}
    real_kd = engine.kd_loss

    def spy(student, teacher, *args, **kwargs):
        teacher_logits.setdefault(current["arm"], []).append(teacher is not None)
        return real_kd(student, teacher, *args, **kwargs)

    monkeypatch.setattr(engine, "kd_loss", spy)
    results = run_recipe(load_recipe(_write(recipes, recipe, "evidence_tiny.yaml")), out_root=tmp_path / "runs",
                         results_path=tmp_path / "results" / "evidence_tiny.json", progress=False,
                         log=lambda line: current.update(arm=line[1:].split("/")[0]))
    arms = results["arms"]
    assert results["hardware"]["device"] in ("cpu", "cuda")
    searched = arms["searched"]["final"]["params"]
    assert searched <= arms["uniform"]["final"]["params"] <= 1.05 * searched
    assert arms["pruned"]["final"]["params"] == pytest.approx(searched, abs=2)
    assert arms["scratch"]["final"]["params"] == arms["scratch_kd"]["final"]["params"] == searched

    uniform = json.loads((tmp_path / "runs/evidence_tiny/uniform/uniform_plan/plan.json").read_text())["layers"]
    assert len(uniform) == 20 and all(s["type"] == "tucker2" for s in uniform.values())
    ratio = next(s["result"]["ratio"] for s in arms["uniform"]["stages"] if s["id"] == "uniform_plan")
    for name, channels in (("layer1.0.conv1", 64), ("layer3.1.conv2", 256), ("layer4.1.conv2", 512)):
        assert all(abs(r - ratio * channels) <= 2 for r in uniform[name]["ranks"]), name  # one ratio, step 4
    pruned = json.loads((tmp_path / "runs/evidence_tiny/pruned/lrs_plan/plan.json").read_text())
    assert "surgery" not in pruned and len(pruned["layers"]) == 20
    assert len({s["density"] for s in pruned["layers"].values()}) == 1

    runs = tmp_path / "runs/evidence_tiny"
    init_kd, init_ce = (load_file(str(runs / arm / "reinit/model.safetensors")) for arm in ("scratch_kd", "scratch"))
    decomposed = load_file(str(runs / "searched/decompose/model.safetensors"))
    key = "layer2.0.conv1.core.weight"
    assert torch.equal(init_kd[key], init_ce[key])  # one seeded init for both scratch arms
    assert not torch.allclose(init_kd[key], decomposed[key])  # and not the base's decomposition

    assert teacher_logits["scratch"] and not any(teacher_logits["scratch"])  # no teacher forward at all
    assert all(teacher_logits["scratch_kd"]) and all(teacher_logits["searched"])

    evidence, base = load_evidence(recipes, tmp_path / "results")
    assert [len(evidence[0].arms[k].runs) for k in ARMS] == [1, 1, 1, 1, 1]
    assert not any(evidence[0].arms[k].runs for k in evidence[0].arms if k not in ARMS)
    assert "Budget, the same for the 5 runs above" in evidence_markdown(evidence, base)


def test_arms_can_be_run_one_at_a_time_into_one_results_file(tree, tmp_path):
    plan = str(REPO / "stresnet/zoo/plans/stresnet18_8x.json")
    recipe = {"name": "by_arm", "data": str(tree), "input_size": 32, "base": {"model": "resnet18", "num_classes": 3},
              "arms": {"a": [{"plan": {"file": plan}}, {"plan": {"id": "u", "uniform": {}}}],
                       "b": [{"plan": {"variant": "pico"}}]}}
    path = _write(tmp_path, recipe)
    kw = dict(out_root=tmp_path / "runs", results_path=tmp_path / "r.json", progress=False)
    with pytest.raises(RecipeError, match="no arm 'c'"):
        run_recipe(load_recipe(path), arms=["c"], log=lambda _: None, **kw)
    first = run_recipe(load_recipe(path), arms=["b"], log=lambda _: None, **kw)
    assert [s["id"] for s in first["arms"]["b"]["stages"]] == ["plan"] and first["arms"]["a"]["stages"] == []
    lines: list[str] = []
    on_disk: list[dict] = []  # what the results file held while arm a ran: b (listed after a) already there

    def log(line: str) -> None:
        lines.append(line)
        if line == "[a/u] running":
            on_disk.append(json.loads((tmp_path / "r.json").read_text())["arms"]["b"])

    second = run_recipe(load_recipe(path), arms=["a"], resume=True, log=log, **kw)
    assert [s["id"] for s in second["arms"]["a"]["stages"]] == ["plan", "u"]
    assert second["arms"]["b"] == first["arms"]["b"] == on_disk[0]  # kept, not rerun, never dropped
    assert "[b/plan] done earlier: skipped (--resume)" in lines and "[a/u] running" in lines
    assert json.loads((tmp_path / "r.json").read_text())["arms"]["b"]["stages"][0]["id"] == "plan"
    # another machine (a fresh run folder) running arm a again keeps b's results from the results file
    third = run_recipe(load_recipe(path), arms=["a"], log=lambda _: None, **{**kw, "out_root": tmp_path / "elsewhere"})
    assert third["arms"]["b"] == first["arms"]["b"] and [s["id"] for s in third["arms"]["a"]["stages"]] == ["plan", "u"]


def test_until_stops_every_arm_after_that_stage_and_resume_finishes_them(tree, tmp_path):
    plan = str(REPO / "stresnet/zoo/plans/stresnet18_8x.json")
    recipe = {"name": "halves", "data": str(tree), "input_size": 32, "base": {"model": "resnet18", "num_classes": 3},
              "arms": {"a": [{"plan": {"file": plan}}, {"plan": {"id": "u", "uniform": {}}}],
                       "b": [{"plan": {"variant": "pico"}}, {"plan": {"id": "u", "uniform": {}}}]}}
    path = _write(tmp_path, recipe)
    kw = dict(out_root=tmp_path / "runs", results_path=tmp_path / "r.json", progress=False, log=lambda _: None)
    with pytest.raises(RecipeError, match="no stage with id 'zero_shot'"):
        run_recipe(load_recipe(path), until="zero_shot", **kw)
    half = run_recipe(load_recipe(path), until="plan", **kw)
    assert [[s["id"] for s in half["arms"][a]["stages"]] for a in "ab"] == [["plan"], ["plan"]]
    whole = run_recipe(load_recipe(path), resume=True, **kw)
    assert [[s["id"] for s in whole["arms"][a]["stages"]] for a in "ab"] == [["plan", "u"], ["plan", "u"]]
    assert whole["arms"]["a"]["stages"][0] == half["arms"]["a"]["stages"][0]  # the first half was not redone


def test_finetune_chooses_its_lr_on_the_selection_split_and_keeps_that_run(tree, tmp_path):
    """``choose: {lr: [...]}`` trains once per value on the fit part and keeps the best on the selection split:
    the kept weights are that run's, and the reported val top-1 is that run's too (val plays no part)."""
    from safetensors.torch import load_file

    recipe = _chain(tree)
    recipe["stages"][3] = {"finetune": {**TRAIN, "epochs": 2, "train_on": "fit", "choose": {"lr": [0.0, 0.05]},
                                        "compare_start": True}}
    path = _write(tmp_path, recipe)
    results = run_recipe(load_recipe(path), out_root=tmp_path / "runs", results_path=tmp_path / "r.json",
                         progress=False, log=lambda _: None)
    ft = {s["type"]: s["result"] for s in results["stages"]}["finetune"]
    tried, start = ft["candidates"][:2], ft["candidates"][2]
    assert [c["values"] for c in tried] == [{"lr": 0.0}, {"lr": 0.05}]
    assert all(0.0 <= c["selection_top1"] <= 1.0 and c["config"]["train_on"] == "fit" for c in tried)
    assert start["values"] == "start (no fine-tune)" and start["epochs"] == 0  # scored, kept only if strictly best
    best = max(tried, key=lambda c: c["selection_top1"])  # first of equals
    assert start["selection_top1"] <= best["selection_top1"]  # seeded: here a fine-tune wins, and is kept
    assert ft["chosen"] == best["values"] and ft["val_top1"] == best["val_top1"]
    run = tmp_path / "runs" / "tiny" / "finetune"
    chosen = load_file(str(run / f"lr={best['values']['lr']}" / "model.safetensors"))
    other = load_file(str(run / f"lr={[c for c in tried if c is not best][0]['values']['lr']}" / "model.safetensors"))
    assert any(not torch.equal(chosen[k], other[k]) for k in chosen)  # two different runs
    assert results["final"]["top1"] == pytest.approx(best["val_top1"])  # eval measured the kept run


def test_latency_budget_in_a_recipe_is_timed_priced_and_checked(tree, tmp_path):
    """A ``latency<=`` share in the search stage times the options on this machine (onnxruntime, cached in the
    stage folder), the plan's predicted latency stays under the limit, and the ``latency`` stage times the
    model and its base in one run and holds the result against that limit. No timed assertion: only that the
    numbers exist, are consistent with one another, and that the cache is reused."""
    recipe = {"format": "stresnet-recipe/1", "name": "fast", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3},
              "stages": [{"search": {"budget": "4x,latency<=80%", "step": 64, "calib": 6}},
                         {"decompose": {}},
                         {"latency": {"input_size": 32, "iters": 3}}]}
    results = run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                         results_path=tmp_path / "results.json", progress=False, log=lambda _: None)
    search, _, timed = (s["result"] for s in results["stages"])
    priced = search["latency"]
    assert priced["cost_size"] == 32 and priced["limit_ms"] == pytest.approx(0.8 * priced["dense_ms"])
    assert priced["predicted_ms"] <= priced["limit_ms"] + 1e-9
    table = json.loads((tmp_path / "runs" / "fast" / "search" / "latency_table.json").read_text())
    assert table["format"] == "stresnet-latency/3" and table["layers"] and table["networks"]
    assert timed["limit_ms"] == priced["limit_ms"] and timed["input_size"] == 32
    assert timed["speedup"] == pytest.approx(timed["base_ms"] / timed["model_ms"])
    assert timed["within_limit"] == (timed["model_ms"] <= 1.1 * timed["limit_ms"])


def test_a_latency_budget_needs_no_table_argument_but_a_bad_term_is_one_line(tree, tmp_path):
    recipe = {"format": "stresnet-recipe/1", "name": "bad", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3},
              "stages": [{"search": {"budget": "4x,latency<=0%", "step": 32, "calib": 6}}]}
    with pytest.raises(RecipeError, match=r"stage search: budget '4x,latency<=0%'.*above 0%"):
        run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                   results_path=tmp_path / "results.json", progress=False, log=lambda _: None)


def test_a_search_around_the_current_plan_stays_near_it_and_a_missing_anchor_is_one_line(tree, tmp_path):
    """``search: {around: plan}`` searches next to the plan the stages before it set (here uniform ranks):
    every rank of the result within ``radius`` grid steps of the anchor's, what the result records; a
    missing anchor file is one RecipeError line naming it."""
    from stresnet.plan import Plan

    recipe = {"format": "stresnet-recipe/1", "name": "near", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3},
              "stages": [{"search": {"budget": "4x", "step": 32, "calib": 6}},
                         {"plan": {"uniform": {"step": 32}}},
                         {"search": {"id": "near", "budget": "2x", "step": 32, "calib": 6, "around": "plan", "radius": 1}}]}
    results = run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                         results_path=tmp_path / "results.json", progress=False, log=lambda _: None)
    _, uniform, near = (s["result"] for s in results["stages"])
    anchor, found = Plan.load(uniform["plan"]), Plan.load(near["plan"])
    assert near["around"]["radius"] == 1 and near["around"]["plan"] == uniform["plan"]
    assert near["around"]["anchor_params"] == uniform["params"]
    assert set(found.layers) == set(anchor.layers)
    assert all(abs(a - b) <= 32 for n, s in found.layers.items() for a, b in zip(s["ranks"], anchor.layers[n]["ranks"]))
    recipe["stages"] = [{"search": {"budget": "2x", "step": 32, "calib": 6, "around": str(tmp_path / "nope.json")}}]
    recipe["name"] = "missing"
    with pytest.raises((RecipeError, FileNotFoundError), match="nope.json"):
        run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                   results_path=tmp_path / "results.json", progress=False, log=lambda _: None)


def _built_with_calibrated_bases(tree, runs, images: int, seed: int):
    """Asserts that a run's ``decompose`` stage saved the calibrated decomposition of its plan on the draw of
    ``images`` fit-part train/ images with ``seed``; returns the plan and the saved state dict."""
    from stresnet.data import calibration_images
    from stresnet.plan import Plan, compress, load_weights
    from stresnet.resolve import model_from_name
    from stresnet.search.estimator import calibrated_bases

    state = json.loads((runs / "decompose" / "stage.json").read_text())["state"]
    assert state["calibration"] == {"images": images, "seed": seed}
    dense = model_from_name("resnet18", num_classes=3, checkpoint=runs / "train_base" / "model.safetensors")
    plan = Plan.load(state["plan"])
    batch, _ = calibration_images(tree / "train", images, 32, seed=seed)
    expected = compress(dense, plan, bases=calibrated_bases(dense, list(plan.factorised()), batch)).state_dict()
    saved = load_weights(compress(model_from_name("resnet18", num_classes=3), plan, init="random"),
                         state["weights"]).state_dict()
    assert all(torch.allclose(saved[k], v, atol=1e-5) for k, v in expected.items())
    return plan, saved


def test_a_calibrated_search_is_decomposed_with_the_bases_it_scored(tree, tmp_path):
    """``search: {calibrated: true}``: the later ``lrs_plan`` and ``decompose`` stages rebuild the calibrated bases
    on the search's own calibration draw, so the model saved is the calibrated decomposition of the plan (and
    not the weight-only one)."""
    from stresnet.plan import compress
    from stresnet.resolve import model_from_name

    recipe = {"format": "stresnet-recipe/1", "name": "cal", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3},
              "stages": [{"train_base": {**TRAIN, "lr": 0.05, "kd_alpha": 0.0}},
                         {"search": {"budget": "4x", "step": 16, "calib": 12, "calibrated": True}},
                         {"lrs_plan": {"method": "lrs", "fractions": [0.1, 0.25]}},
                         {"decompose": {}}]}
    results = run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                         results_path=tmp_path / "cal.json", progress=False, log=lambda _: None)
    runs = tmp_path / "runs" / "cal"
    assert json.loads((runs / "search" / "report.json").read_text())["calibrated"] is True
    plan, saved = _built_with_calibrated_bases(tree, runs, images=12, seed=0)
    plain = compress(model_from_name("resnet18", num_classes=3, checkpoint=runs / "train_base" / "model.safetensors"),
                     plan).state_dict()
    assert not all(torch.allclose(saved[k], v, atol=1e-5) for k, v in plain.items())
    assert results["stages"][2]["result"]["tuning"]["accuracies"]


def test_decompose_calibrated_builds_any_plan_with_calibrated_bases_and_refuses_another_draw(tree, tmp_path):
    """``decompose: {calibrated: true}`` gives a plan that no calibrated search made (here uniform ranks) the
    calibrated bases on its own draw, so two arms of a comparison can share the decomposition; after a calibrated
    search a different draw is refused in one line (the model would not be the one the search scored)."""
    recipe = {"format": "stresnet-recipe/1", "name": "ucal", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3},
              "stages": [{"train_base": {**TRAIN, "lr": 0.05, "kd_alpha": 0.0}},
                         {"search": {"budget": "4x", "step": 16, "calib": 12}},
                         {"plan": {"id": "uniform_plan", "uniform": {"step": 4}}},
                         {"decompose": {"calibrated": True, "calib": 10, "seed": 1, "eval": False}}]}
    run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
               results_path=tmp_path / "ucal.json", progress=False, log=lambda _: None)
    _built_with_calibrated_bases(tree, tmp_path / "runs" / "ucal", images=10, seed=1)

    recipe["name"] = "clash"  # refused when the recipe loads, before the search it would have run first
    recipe["stages"] = [{"search": {"budget": "4x", "step": 16, "calib": 12, "calibrated": True}},
                        {"decompose": {"calibrated": True, "calib": 10}}]
    with pytest.raises(RecipeError, match=r"stages\.decompose: calibrated on 10 images \(seed 0\) but the search "
                                          r"calibrated on 12 \(seed 0\)"):
        load_recipe(_write(tmp_path, recipe))
    recipe["stages"][1]["decompose"]["calib"] = 12  # the search's own draw is accepted
    load_recipe(_write(tmp_path, recipe))


def test_a_tied_search_gives_each_layer_one_rank_for_both_channel_modes(tree, tmp_path):
    """``search: {tied: true}`` searches only how ranks are spread across layers (``stresnet search
    --tied-ranks``): every Tucker-2 layer of its plan has ``r_in = min(r_out, C_in)``, and the search report says
    so; the default search picks the two ranks independently. (The output-MSE estimator: the random base's
    zero-initialised last BNs leave the Fisher estimator no gradient to weigh.)"""
    from stresnet.plan import Plan
    from stresnet.resolve import model_from_name

    convs = dict(model_from_name("resnet18", num_classes=3).named_modules())
    for tied in (True, False):
        name = f"tied_{tied}".lower()
        recipe = {"format": "stresnet-recipe/1", "name": name, "data": str(tree), "input_size": 32,
                  "base": {"model": "resnet18", "num_classes": 3},
                  "stages": [{"search": {"budget": "4x", "step": 16, "calib": 12, "estimator": "mse", "tied": tied}}]}
        run_recipe(load_recipe(_write(tmp_path, recipe)), out_root=tmp_path / "runs",
                   results_path=tmp_path / f"{name}.json", progress=False, log=lambda _: None)
        search = tmp_path / "runs" / name / "search"
        assert json.loads((search / "report.json").read_text())["tied_ranks"] is tied
        plan = Plan.load(next(search.glob("plan_*.json")))
        ranks = {layer: spec["ranks"] for layer, spec in plan.layers.items() if spec["type"] == "tucker2"}
        assert ranks
        balanced = [r_in == min(r_out, convs[layer].in_channels) for layer, (r_out, r_in) in ranks.items()]
        assert all(balanced) if tied else not all(balanced)
