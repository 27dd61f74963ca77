"""YOLOv5s/n (ultralytics) compressed by the same plans and search: zoo plans, compress, hub, recipe, bad input."""
from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("the 'detect' extra (ultralytics) is not installed", allow_module_level=True)
# ultralytics imports cv2 at import time; the GUI build (opencv-python) fails there without the
# system's libGL, which scripts/setup.sh avoids with opencv-python-headless: skip, never crash collection
pytest.importorskip("cv2", exc_type=ImportError,
                    reason="cv2 does not import (opencv-python without libGL? install opencv-python-headless)")

from stresnet import cli  # noqa: E402
from stresnet.cost import profile  # noqa: E402
from stresnet.detect import DetectError  # noqa: E402
from stresnet.detect.model import (  # noqa: E402
    FactorisedDetectionModel, build_detector, compress_detector, create_base, detector_from_name, zoo_plan)
from stresnet.plan import Plan, PlanError, plan_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = (3, 160, 160)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs with the network cut: nothing may reach for fonts, weights, telemetry or updates."""
    tried: list = []

    def refuse(*args, **kwargs):
        tried.append(args[:2])
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert tried == [], f"tried to reach the network: {tried}"


@pytest.mark.parametrize("variant,base", [("yolov5s_2x", "yolov5s"), ("yolov5n_2x", "yolov5n")])
def test_zoo_plan_halves_the_params(variant: str, base: str) -> None:
    plan = zoo_plan(variant)
    assert plan.base["library"] == "ultralytics" and plan.base["arch"] == f"{base}.yaml"
    assert plan.meta.get("method") == "compressnas-ilp" and plan.meta.get("budget") == "2x"
    small, full = profile(detector_from_name(variant), SIZE), profile(detector_from_name(base), SIZE)
    assert small.params <= full.params / 2
    assert small.params > full.params / 2.2  # the search spends the budget, it does not overshoot it
    assert small.macs < full.macs


def test_stresnet_profile_reports_the_yolo_models(capsys) -> None:
    assert cli.main(["profile", "yolov5n", "yolov5n_2x", "--input-size", "160", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["yolov5n_2x"]["params"] <= out["yolov5n"]["params"] / 2
    assert out["yolov5n"]["params"] == sum(p.numel() for p in create_base("yolov5n.yaml").parameters())


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Give the BatchNorms non-trivial statistics, as training would (a few forward passes in train mode)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, *SIZE))
    return model.eval()


def test_compress_keeps_outputs_and_folds_batchnorm_exactly() -> None:
    base = _trained_like(create_base("yolov5n.yaml"))
    x = torch.rand(2, *SIZE)
    with torch.no_grad():
        ref = base(x)[0]
    full_rank = {"model.5.conv": {"type": "tucker2", "ranks": [128, 64]},        # 3x3 stride 2: exact at full rank
                 "model.8.m.0.cv2.conv": {"type": "tucker2", "ranks": [128, 128]}}
    model = compress_detector(create_base("yolov5n.yaml"), Plan(layers={}))  # class swap only
    model.load_state_dict(base.state_dict())
    compress_detector(model, Plan(layers=full_rank)).eval()
    assert isinstance(model, FactorisedDetectionModel)
    assert plan_of(model).layers == {k: {"type": "tucker2", "ranks": v["ranks"]} for k, v in full_rank.items()}
    with torch.no_grad():
        out = model(x)[0]
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3)
    low = compress_detector(create_base("yolov5n.yaml").eval(), zoo_plan("yolov5n_2x"))
    with torch.no_grad():
        assert low(x)[0].shape == ref.shape
        unfused = model(x)[0]
        model.fuse(verbose=False)  # what ultralytics' predictor / validator do first
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model(x)[0], unfused, atol=1e-3, rtol=1e-3)


def test_plan_build_and_weights_roundtrip(tmp_path: Path) -> None:
    from stresnet.plan import build, load_weights
    from stresnet.zoo.hub import save_weights

    plan = zoo_plan("yolov5n_2x")
    model = compress_detector(_trained_like(create_base("yolov5n.yaml")), plan)
    save_weights(model, tmp_path / "w.safetensors")
    again = load_weights(build(plan), tmp_path / "w.safetensors").eval()
    x = torch.rand(1, *SIZE)
    with torch.no_grad():
        assert torch.equal(again(x)[0], model.eval()(x)[0])


def test_bad_plans_fail_in_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base": {"arch": "yolov5n.yaml", "library": "ultralytics"},
                               "layers": {"model.99.conv": {"type": "tucker2", "ranks": [8, 8]}}}))
    assert cli.main(["profile", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "stresnet: error: layer 'model.99.conv': no such module in the model"
    with pytest.raises(DetectError, match=r"^layer 'model.5.conv': lrs is not supported in a detector plan"):
        compress_detector(create_base("yolov5n.yaml"), {"layers": {"model.5.conv": {"type": "lrs", "ranks": [8, 8],
                                                                                      "density": 0.1}}})
    with pytest.raises(PlanError, match=r"rank r_out=999 exceeds the mode size 128"):
        build_detector(Plan(layers={"model.5.conv": {"type": "tucker2", "ranks": [999, 8]}},
                            base={"arch": "yolov5n.yaml", "library": "ultralytics"}))
    with pytest.raises(DetectError, match=r"^base 'yolov9z.yaml': not an ultralytics model yaml"):
        create_base("yolov9z.yaml")


def test_hub_entry_detects_on_coco_mini_images(shared: Path) -> None:
    images = sorted((shared / "data" / "coco-mini" / "images" / "val2017").glob("*.jpg"))[:2]
    assert images, "coco-mini val images missing"
    model = torch.hub.load(str(REPO), "yolov5s_2x", source="local", pretrained=False)
    assert sum(p.numel() for p in model.model.parameters()) <= sum(
        p.numel() for p in create_base("yolov5s.yaml").parameters()) / 2
    results = model([str(p) for p in images], imgsz=160, conf=0.0, verbose=False)
    assert len(results) == 2
    for r, path in zip(results, images):
        assert Path(r.path).name == path.name
        assert r.boxes is not None and r.boxes.xyxy.shape[-1] == 4 and len(r.boxes) > 0
    with pytest.raises(DetectError, match=r"recipes/yolov5n_2x_coco\.yaml"):
        torch.hub.load(str(REPO), "yolov5n_2x", source="local", pretrained=True)


def test_hub_entry_loads_recipe_weights(tmp_path: Path) -> None:
    from stresnet.zoo.hub import save_weights

    trained = _trained_like(detector_from_name("yolov5n_2x"))
    save_weights(trained, tmp_path / "model.safetensors")
    model = torch.hub.load(str(REPO), "yolov5n_2x", source="local", weights=str(tmp_path / "model.safetensors"))
    mine = model.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in trained.state_dict().items())
    wrong = tmp_path / "wrong.safetensors"
    save_weights(create_base("yolov5n.yaml"), wrong)
    with pytest.raises(PlanError, match=r"^checkpoint .*wrong.safetensors: does not match the model: missing"):
        torch.hub.load(str(REPO), "yolov5n_2x", source="local", weights=str(wrong))


def _tiny_recipe(tmp_path: Path, shared: Path, stages: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""format: stresnet-recipe/1
task: detect
name: tiny_detect
data: {shared}/data/coco-mini
imgsz: 64
expected_cpu_minutes: 3
base: {{model: yolov5n.yaml}}
stages:
{stages}""")
    return path


def test_tiny_recipe_runs_end_to_end(tmp_path: Path, shared: Path, capsys) -> None:
    recipe = _tiny_recipe(tmp_path, shared, """  - prepare: {limit: 6}
  - train_base: {epochs: 1, batch: 6}
  - search: {budget: 2x, calib_images: 4, step: 16}
  - compress: {}
  - finetune: {epochs: 1, batch: 6, distill: true}
  - val: {}
  - agreement: {conf: 0.00001, max_det: 5}
  - card: {variant: yolov5n_2x, tag: tiny, out: %s}
""" % (tmp_path / "cards"))
    results = tmp_path / "results.json"
    from ultralytics.utils import NUM_THREADS

    torch.set_num_threads(NUM_THREADS + 1)  # not what ultralytics sets on a CPU call (cpu_count - 1)
    assert cli.main(["recipe", "run", str(recipe), "--out", str(tmp_path / "runs"), "--results", str(results)]) == 0
    assert torch.get_num_threads() == NUM_THREADS + 1  # train, val and predict gave it back to the later stages
    res = json.loads(results.read_text())
    for key in ("base", "compressed"):
        assert 0.0 <= res[key]["map50_95"] <= res[key]["map50"] <= 1.0
        assert res[key]["val_images"] == 6
    assert res["compressed"]["params"] <= res["base"]["params"] / 2
    assert res["compressed"]["params_ratio"] >= 2.0
    assert res["agreement"]["pseudo_boxes"] == 30  # 5 per image
    assert 0.0 <= res["agreement"]["zero_shot"]["map50_95"] <= 1.0
    assert res["wall_seconds"] > 0 and res["expected_cpu_minutes"] == 3
    assert (tmp_path / "runs" / "tiny_detect" / "finetune" / "model.safetensors").is_file()
    assert res["stages"][4]["result"]["distilled"] is True
    card = (tmp_path / "cards" / "yolov5n_2x.tiny.md").read_text()
    assert "No pretrained COCO weights exist here" in card and "anchor-free" in card
    # a second run into the same folder refuses; --resume skips every finished stage
    assert cli.main(["recipe", "run", str(recipe), "--out", str(tmp_path / "runs"), "--results", str(results)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["recipe", "run", str(recipe), "--out", str(tmp_path / "runs"), "--results", str(results),
                     "--resume"]) == 0
    assert capsys.readouterr().out.count("done earlier: skipped") == 8


def test_bad_detect_recipes_fail_in_one_line(tmp_path: Path, shared: Path, capsys) -> None:
    recipe = _tiny_recipe(tmp_path, shared, "  - detect_everything: {}\n")
    assert cli.main(["recipe", "run", str(recipe), "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"stresnet: error: {recipe}: stages[0]: unknown detect stage "
                                                      f"'detect_everything'")
    recipe = _tiny_recipe(tmp_path, shared, "  - search: {budget: 2x}\n")
    assert cli.main(["recipe", "run", str(recipe), "--out", str(tmp_path / "runs2")]) == 2
    assert capsys.readouterr().err.strip() == ("stresnet: error: stage search: needs data-yaml "
                                               "(put a 'prepare' stage before it)")
