"""Rank plans: round trips, rebuilding an architecture from (base, plan), and one-line errors."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from stresnet import Plan, PlanError, build, compress, load_weights, plan_of
from stresnet.cli import main

from plans import MIXED_LAYERS

PLAN = {
    "base": {"arch": "resnet18", "num_classes": 10},
    "layers": {**MIXED_LAYERS, "layer1.1.conv2": {"type": "full"}},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: one torch thread


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10).eval()


def test_json_round_trip(tmp_path: Path) -> None:
    plan = Plan.from_dict(PLAN)
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json").to_dict() == plan.to_dict()


def test_plan_of_reads_back_the_applied_plan(base: torch.nn.Module) -> None:
    model = compress(copy.deepcopy(base), Plan.from_dict(PLAN))
    assert plan_of(model).layers == Plan.from_dict(PLAN).factorised()


def test_rebuild_from_base_and_plan_loads_the_state_dict(base: torch.nn.Module, tmp_path: Path) -> None:
    model = compress(copy.deepcopy(base), Plan.from_dict(PLAN)).eval()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    rebuilt = load_weights(build(Plan.from_dict(PLAN)), path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def test_compressed_model_stays_close_to_base_and_smaller(base: torch.nn.Module) -> None:
    plan = {"layers": {"layer3.0.conv2": {"type": "tucker2", "ranks": [200, 200]}}}
    model = compress(copy.deepcopy(base), plan).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = base(x), model(x)
    assert float((out - ref).norm() / ref.norm()) < 0.2
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in base.parameters())


SPARSE_PLAN = {"layers": {"layer1.0.conv2": {"type": "sparse", "density": 0.25},
                          "layer2.0.downsample.0": {"type": "sparse", "density": 0.5},
                          "layer3.0.conv1": {"type": "lrs", "ranks": [32, 32], "density": 0.05}}}


def test_sparse_spec_round_trip(base: torch.nn.Module, tmp_path: Path) -> None:
    from stresnet.layers import LowRankSparseConv2d, MaskedConv2d

    plan = Plan.from_dict(SPARSE_PLAN)
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json").to_dict() == plan.to_dict()
    model = compress(copy.deepcopy(base), plan).eval()
    # the masked part inside the lrs layer is not a layer of its own
    assert plan_of(model).layers == plan.layers
    layer = model.layer1[0].conv2
    assert type(layer) is MaskedConv2d and int(layer.mask.sum()) == round(0.25 * layer.weight.numel())
    w = layer.weight.detach().abs()
    assert float(w[layer.mask.bool()].min()) >= float(w[~layer.mask.bool()].max())  # magnitude top-k
    assert torch.equal(layer.weight, base.layer1[0].conv2.weight)  # the dense kernel, for a gradual schedule
    assert isinstance(model.layer3[0].conv1, LowRankSparseConv2d)
    # the random-init architecture has the same plan and masks of the right size, and loads the weights
    rebuilt = compress(copy.deepcopy(base), plan, init="random")
    assert plan_of(rebuilt).layers == plan.layers
    assert int(rebuilt.layer1[0].conv2.mask.sum()) == int(layer.mask.sum())
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), model(x), atol=1e-5)


def test_surgery_plan_builds_and_reads_back() -> None:
    plan = Plan.from_dict({**PLAN, "surgery": {"stem": {"width": 32, "proj": True}}})
    model = build(plan)
    assert model.conv1.last.out_channels == 32
    assert plan_of(model).surgery == {"stem": {"width": 32, "proj": True}}
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(
    "layers,needle",
    [
        ({"layer9.conv1": {"type": "tucker2", "ranks": [8, 8]}}, "'layer9.conv1': no such module"),
        ({"bn1": {"type": "tucker2", "ranks": [8, 8]}}, "'bn1': is a BatchNorm2d"),
        ({"layer1.0.conv1": {"type": "tucker2", "ranks": [0, 8]}}, "rank 0 must be a positive integer"),
        ({"layer1.0.conv1": {"type": "tucker2", "ranks": [8, 65]}}, "rank r_in=65 exceeds the mode size 64"),
        ({"layer1.0.conv1": {"type": "tucker2", "ranks": [8.5, 8]}}, "rank 8.5 must be a positive integer"),
        ({"layer1.0.conv1": {"type": "lrs", "ranks": [8, 8], "density": 1.5}}, "density 1.5"),
        ({"layer1.0.conv2": {"type": "sparse", "density": 0}}, "'layer1.0.conv2': density 0 must be in (0, 1]"),
        ({"layer1.0.conv2": {"type": "sparse", "density": 1.01}}, "'layer1.0.conv2': density 1.01 must be"),
        ({"layer1.0.conv2": {"type": "sparse", "density": "0.5"}}, "'layer1.0.conv2': density '0.5' must be"),
        ({"layer1.0.conv2": {"type": "sparse"}}, "'layer1.0.conv2': density None must be"),
        ({"fc": {"type": "sparse", "density": 0.5}}, "'fc': is a Linear, sparse needs Conv2d"),
        ({"layer1.0.conv1": {"type": "cp", "rank": 8}}, "unknown type 'cp'"),
        ({"fc": {"type": "tucker2", "ranks": [4, 4]}}, "'fc': is a Linear"),
        ({"layer4.0.conv1": {"type": "tt", "ranks": [8, 8, 8, 8], "factors": [[16, 16], [16, 16]]}},
         "do not multiply to C_out=512"),
    ],
)
def test_bad_plans_raise_one_line_naming_module_and_value(base: torch.nn.Module, layers: dict, needle: str) -> None:
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError) as info:
        compress(model, {"layers": layers})
    assert needle in str(info.value) and "\n" not in str(info.value)
    # validation happens before any change: the model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_reports_malformed_json_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": {"conv1": ')
    code, err = _run_cli(["profile", str(bad), "--input-size", "32"], capsys)
    assert code == 2 and "malformed JSON" in err and str(bad) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_reports_bad_rank_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"base": {"arch": "resnet18"}, "layers": {"layer2.0.conv2": {"type": "tucker2", "ranks": [8, 999]}}}))
    code, err = _run_cli(["profile", str(path), "--input-size", "32"], capsys)
    assert code == 2 and "layer2.0.conv2" in err and "999" in err and err.count("\n") == 1


def test_cli_names_the_checkpoint_tensor_that_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plan = tmp_path / "plan.json"
    Plan.from_dict(PLAN).save(plan)
    other = dict(PLAN, layers={**PLAN["layers"], "layer1.0.conv1": {"type": "tucker2", "ranks": [24, 24]}})
    model = build(Plan.from_dict(other))
    ckpt = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    code, err = _run_cli(["profile", str(plan), "--input-size", "32", "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and "layer1.0.conv1." in err and "[24" in err and err.count("\n") == 1


def test_cli_rejects_a_truncated_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(100)}, str(ckpt))
    ckpt.write_bytes(ckpt.read_bytes()[:-50])
    code, err = _run_cli(["profile", "resnet18", "--input-size", "32", "--num-classes", "10", "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and str(ckpt) in err and err.count("\n") == 1


def test_cli_rejects_an_unknown_model(capsys: pytest.CaptureFixture) -> None:
    code, err = _run_cli(["profile", "resnet_nope"], capsys)
    assert code == 2 and "resnet_nope" in err


def test_cli_rejects_a_bad_budget_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = _run_cli(["search", "--data", str(tmp_path), "--budget", "8y", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "'8y'" in err and err.count("\n") == 1 and not (tmp_path / "o").exists()
