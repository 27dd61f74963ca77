"""The zoo as users meet it: timm names, cfgs, features, publish -> offline Hub cache -> load, bad weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import stresnet  # noqa: F401  (registers the zoo)
from stresnet.cost import profile
from stresnet.zoo.hub import install_to_cache, publish, register
from stresnet.zoo.models import VARIANTS, WeightsError, packaged_plan, recipe_path, tags_of, weights_registry

FAMILY = {  # STResNet paper, 1000 classes at 224: params (M), GMACs
    "stresnet_pico": (0.628, 0.124), "stresnet_nano": (1.022, 0.516), "stresnet_micro": (1.577, 0.749),
    "stresnet_milli": (3.139, 1.068), "stresnet_tiny": (4.164, 1.207),
}


def test_only_registered_weights_are_pretrained_tags() -> None:
    """timm lists as pretrained exactly the tags whose weights are in the registry; '.in1k' stays a cfg, the default."""
    assert set(VARIANTS) <= set(timm.list_models("stresnet*"))
    registry = weights_registry()
    assert set(timm.list_models("stresnet*", pretrained=True)) == {n for n in registry if n.startswith("stresnet")}
    for v in VARIANTS:
        assert {n.split(".")[1] for n in timm.list_models(v, include_tags=True)} == set(tags_of(v))
        for tag in tags_of(v):
            cfg = timm.get_pretrained_cfg(f"{v}.{tag}").to_dict()
            assert cfg.get("hf_hub_id") == registry.get(f"{v}.{tag}", {}).get("hf_hub_id")
            assert cfg["hf_hub_filename"] == "model.safetensors" and cfg["license"]
        if "imagenette" in tags_of(v):
            assert timm.get_pretrained_cfg(f"{v}.imagenette").input_size == (3, 128, 128)
            default = timm.get_pretrained_cfg(v)
            assert default.tag == "in1k" and default.num_classes == 1000 and default.input_size == (3, 224, 224)


def test_efficientnet_variants_carry_their_bases_reading_and_a_tag_that_claims_no_imagenet_training() -> None:
    """The Lite0 variants read images as the converted checkpoint does ([-1, 1] inputs, bicubic) and their only
    tag names the 10-class distillation; timm's first_conv and classifier follow the base architecture."""
    for v in ("stresnet_lite0_1p5x", "stresnet_lite0_2x"):
        assert tags_of(v) == ("kd_imagenette",) and "in1k" not in tags_of(v)
        cfg = timm.get_pretrained_cfg(v)
        assert cfg.tag == "kd_imagenette" and cfg.num_classes == 1000 and cfg.input_size == (3, 224, 224)
        assert (cfg.mean, cfg.std, cfg.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bicubic")
        factorised_head = "classifier" in packaged_plan(v).layers  # an SVD head's output layer is classifier.last
        assert cfg.first_conv == "conv_stem" and cfg.classifier == ("classifier.last" if factorised_head else "classifier")
        assert f"{cfg.classifier}.weight" in timm.create_model(v, device="meta").state_dict()  # timm drops it for a new head
        assert packaged_plan(v).base["arch"] == "efficientnet_lite0"
        assert recipe_path(f"{v}.kd_imagenette") == "recipes/efficientnet_lite0_lrs.yaml"
    model = timm.create_model("stresnet_lite0_2x", num_classes=7, in_chans=1).eval()  # a new head, 1 channel
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    feats = timm.create_model("stresnet_lite0_2x", features_only=True)
    assert [o.shape[1] for o in feats(torch.randn(1, 3, 64, 64))] == feats.feature_info.channels()


def test_a_tag_without_weights_says_which_recipe_makes_them() -> None:
    with pytest.raises(WeightsError, match=r"stresnet18_8x.in1k: none are published.*recipes/stresnet18_8x_in1k.yaml`"):
        timm.create_model("stresnet18_8x", pretrained=True)  # the default tag, .in1k
    with pytest.raises(WeightsError, match=r"stresnet_pico.in1k: .*no recipe makes them yet"):
        timm.create_model("stresnet_pico.in1k", pretrained=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_first_conv_is_the_conv_that_sees_the_image(name: str) -> None:
    model = timm.create_model(name, device="meta")
    first = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == 3


@pytest.mark.parametrize("name", ["stresnet18_2x", "stresnet18_8x", "stresnet_pico"])  # plain, Tucker-2, narrowed stem
def test_models_build_on_the_device_and_dtype_timm_passes(name: str) -> None:
    meta = timm.create_model(name, device="meta", in_chans=1)
    assert {t.device.type for t in (*meta.parameters(), *meta.buffers())} == {"meta"}
    double = timm.create_model(name, dtype=torch.float64, in_chans=1, num_classes=3).eval()
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double(torch.randn(1, 1, 64, 64, dtype=torch.float64)).shape == (1, 3)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_matches_the_papers_params_and_macs(name: str) -> None:
    params_m, gmacs = FAMILY[name]
    prof = profile(timm.create_model(name), (3, 224, 224))
    assert abs(prof.params / 1e6 / params_m - 1) < 0.005
    assert abs(prof.macs / 1e9 / gmacs - 1) < 0.02


def test_packaged_plans_build_the_registered_models() -> None:
    model = timm.create_model("stresnet18_8x", num_classes=10)
    assert stresnet.plan_of(model).layers == packaged_plan("stresnet18_8x").factorised()


def test_features_only_reports_the_narrow_stem() -> None:
    feats = timm.create_model("stresnet_pico", features_only=True)
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels() == [32, 64, 128, 256, 512]


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """stresnet_pico.imagenette published, registered in a temporary registry and installed in a temporary cache."""
    from huggingface_hub import constants

    from stresnet.zoo import models

    cache, registry = tmp_path / "hub", tmp_path / "weights.json"
    monkeypatch.setenv("STRESNET_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    models.weights_registry.cache_clear()
    torch.manual_seed(0)
    model = timm.create_model("stresnet_pico", num_classes=10).eval()
    record = publish(model, "stresnet_pico.imagenette", tmp_path / "pub", {"top1": 0.5}, "recipes/x.yaml")
    register("stresnet_pico.imagenette", record, registry)
    snapshot = install_to_cache(tmp_path / "pub", record["hf_hub_id"], cache)
    yield model, snapshot, cache, registry
    models.weights_registry.cache_clear()


def test_publish_round_trip_through_the_offline_cache(published) -> None:
    model, snapshot, _, _ = published
    loaded = timm.create_model("stresnet_pico.imagenette", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    config = json.loads((snapshot / "config.json").read_text())
    assert config["architecture"] == "stresnet_pico" and "layers" in config["model_args"]["plan"]


def test_pretrained_weights_adapt_to_one_input_channel_and_new_classes(published) -> None:
    """timm sums the first conv's RGB weights for in_chans=1: a grey image then gives the RGB model's features."""
    model, _, _, _ = published
    grey = timm.create_model("stresnet_pico.imagenette", pretrained=True, in_chans=1, num_classes=5).eval()
    assert grey.in_chans == 1 and grey.get_classifier().out_features == 5
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey.forward_features(x), model.forward_features(x.expand(-1, 3, -1, -1)))
    headless = timm.create_model("stresnet_pico.imagenette", pretrained=True, in_chans=1, num_classes=0).eval()
    with torch.no_grad():
        assert headless(x).shape == (2, 512)


def test_a_fresh_offline_process_loads_by_name_hf_hub_and_local_dir(published) -> None:
    model, snapshot, cache, registry = published
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[0, :3].tolist()
    code = (
        "import sys, torch, timm, stresnet; torch.manual_seed(1); x = torch.load(sys.argv[1])\n"
        "for name in ('stresnet_pico.imagenette', 'hf-hub:stresnet/stresnet_pico.imagenette', 'local-dir:' + sys.argv[2]):\n"
        "    m = timm.create_model(name, pretrained=True).eval()\n"
        "    print(m(x)[0, :3].tolist())\n"
    )
    torch.save(x, snapshot.parent.parent / "x.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "STRESNET_WEIGHTS_REGISTRY": str(registry)}
    out = subprocess.run([sys.executable, "-c", code, str(snapshot.parent.parent / "x.pt"), str(snapshot)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert len(rows) == 3 and all(row == pytest.approx(expected, abs=1e-6) for row in rows)


def test_corrupt_weights_name_the_file_and_the_recipe(published) -> None:
    _, snapshot, _, _ = published
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"sha256.*stresnet recipe run recipes/stresnet_pico.yaml"):
        timm.create_model("stresnet_pico.imagenette", pretrained=True)


def test_truncated_weights_are_reported(published) -> None:
    _, snapshot, _, registry = published
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:1000])
    registry.write_text("{}")  # no sha256 on record: the format check still catches it
    from stresnet.zoo import models

    models.weights_registry.cache_clear()
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        timm.create_model("stresnet_pico.imagenette", pretrained=True)


def test_missing_weights_name_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"not found.*stresnet recipe run recipes/stresnet18_4x.yaml"):
        timm.create_model("stresnet18_4x.imagenette", pretrained=True)


def test_recipe_publish_card_quotes_measured_numbers_and_fresh_process_reproduces_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tree: Path) -> None:
    """publish_run (the recipe's publish stage) -> card + registry + cache; zoo-verify reloads it offline in a
    fresh process through timm and torch.hub and re-measures the same top-1."""
    from huggingface_hub import constants

    from stresnet.evaluate import accuracy
    from stresnet.zoo import models
    from stresnet.zoo.hub import publish_run
    from stresnet.zoo.verify import card_top1, verify_published

    cache, registry = tmp_path / "hub", tmp_path / "weights.json"
    monkeypatch.setenv("STRESNET_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    models.weights_registry.cache_clear()
    torch.manual_seed(0)
    model = timm.create_model("stresnet_pico", num_classes=10).eval()
    measured = accuracy(model, tree / "val", 128)
    metrics = {"top1": measured["top1"], "top5": measured["top5"], "images": measured["images"], "params": 1,
               "unrelated": "dropped"}
    record = publish_run(model, "stresnet_pico.imagenette", tmp_path / "pub", metrics,
                         "stresnet recipe run recipes/stresnet_pico.yaml", registry=registry, cache_dir=cache)
    card = tmp_path / "pub" / "stresnet_pico.imagenette" / "README.md"
    assert card_top1(card) == float(f"{100 * measured['top1']:.2f}")
    assert "stresnet recipe run recipes/stresnet_pico.yaml" in card.read_text() and record["sha256"] in card.read_text()
    assert "unrelated" not in json.loads(registry.read_text())["stresnet_pico.imagenette"]["metrics"]
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "stresnet_pico.imagenette.md").write_text(card.read_text())
    rows = verify_published(tree / "val", cards=cards)
    assert len(rows) == 1 and "error" not in rows[0], rows
    assert rows[0]["equals_registry"] and rows[0]["equals_card"] and rows[0]["hub_equals_timm"]
    models.weights_registry.cache_clear()


def test_publish_rejects_unknown_names(tmp_path: Path) -> None:
    from stresnet.plan import PlanError
    from stresnet.zoo.hub import publish_run

    with pytest.raises(PlanError, match="stresnet18_3x.imagenette"):
        publish_run(timm.create_model("resnet18", num_classes=10), "stresnet18_3x.imagenette", tmp_path, {},
                    "x", registry=None, install_cache=False)


def test_publish_records_weights_where_the_cli_says_never_in_the_package(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from stresnet.recipes.config import weights_registry_out

    monkeypatch.delenv("STRESNET_WEIGHTS_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert weights_registry_out() == Path("weights.json")  # a user's folder
    (tmp_path / "stresnet" / "zoo").mkdir(parents=True)
    (tmp_path / "stresnet" / "zoo" / "weights.json").write_text("{}")
    assert weights_registry_out() == Path("stresnet/zoo/weights.json")  # a checkout: the shipped registry
    monkeypatch.setenv("STRESNET_WEIGHTS_REGISTRY", str(tmp_path / "elsewhere.json"))
    assert weights_registry_out() == tmp_path / "elsewhere.json"


def test_the_same_weights_always_publish_to_the_same_sha256(tmp_path: Path) -> None:
    """A pinned sha256 must follow the weights only: the metadata map's order must not leak into the file."""
    from stresnet.zoo.hub import save_weights

    model = torch.nn.Linear(3, 2)
    metadata = {f"key{i}": str(i) for i in range(12)}
    shas = {save_weights(model, tmp_path / f"{i}.safetensors", metadata) for i in range(6)}
    assert len(shas) == 1
    from safetensors import safe_open

    with safe_open(tmp_path / "0.safetensors", "pt") as f:
        assert json.loads(f.metadata()["stresnet"]) == metadata
