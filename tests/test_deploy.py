"""stresnet.deploy: ONNX export parity for every factorised layer, int8 QDQ export, latency bench keys, MCU budgets."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import timm  # noqa: E402

from stresnet import Plan, compress  # noqa: E402
from stresnet.cost import profile  # noqa: E402
from stresnet.deploy import (  # noqa: E402
    bench_int8,
    bench_latency,
    export_onnx,
    format_int8,
    format_latency,
    format_mcu,
    mcu_report,
    onnx_accuracy,
    onnx_ops,
    onnx_parity,
    quantize_int8,
)
from stresnet.layers import LowRankLinear, LowRankSparseConv2d, TT5Conv2d, TTConv2d, Tucker2Conv2d  # noqa: E402
from stresnet.resolve import model_from_name  # noqa: E402
from stresnet.zoo.models import VARIANTS  # noqa: E402
from plans import MIXED_LAYERS  # noqa: E402

MIXED_PLAN = {"layers": MIXED_LAYERS}


class TinyNet(nn.Module):
    """conv-bn-relu -> Tucker-2 conv -> pool -> low-rank fc: small enough to quantise and bench in a second."""

    def __init__(self, width: int = 8, num_classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block = Tucker2Conv2d(width, 2 * width, [width, width // 2], kernel_size=3, padding=1, stride=2)
        self.fc = LowRankLinear(2 * width, num_classes, rank=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.block(x))
        return self.fc(x.mean((2, 3)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so folding BN into the convs is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


@pytest.fixture(scope="module")
def mixed() -> nn.Module:
    torch.manual_seed(0)
    model = compress(timm.create_model("resnet18", num_classes=10), Plan.from_dict(MIXED_PLAN), init="random")
    return _randomise_bn(model).eval()


def _assert_parity(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert scale > 1e-2, "logits too small for the parity check to mean anything"
    diff = onnx_parity(model, path, x)
    assert diff < 1e-4, f"fp32 ONNX differs from PyTorch by {diff:.3g} (logits up to {scale:.3g})"


def test_mixed_plan_exports_with_fp32_parity(mixed: nn.Module, tmp_path: Path) -> None:
    kinds = {type(m) for m in mixed.modules()}
    assert {Tucker2Conv2d, TTConv2d, TT5Conv2d, LowRankSparseConv2d, LowRankLinear} <= kinds
    path = export_onnx(mixed, tmp_path / "mixed.onnx", (3, 64, 64))
    # batch 3 through a graph traced at batch 1: the TT5 reshapes must follow the dynamic batch
    _assert_parity(mixed, path, torch.randn(3, 3, 64, 64))
    ops = onnx_ops(path)
    assert ops["Conv"] > 20 and "Reshape" in ops


def test_parity_detects_a_different_model(mixed: nn.Module, tmp_path: Path) -> None:
    path = export_onnx(mixed, tmp_path / "mixed.onnx", (3, 64, 64))
    other = copy.deepcopy(mixed)
    with torch.no_grad():
        other.get_submodule("layer4.0.conv1").core.weight.mul_(1.5)  # the 5-core TT's kxk core
    assert onnx_parity(other, path, torch.randn(2, 3, 64, 64)) > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_zoo_variant_exports_with_fp32_parity(variant: str, tmp_path: Path) -> None:
    model = _randomise_bn(timm.create_model(variant, num_classes=10))
    model.train()
    path = export_onnx(model, tmp_path / f"{variant}.onnx", (3, 64, 64))
    assert model.training, "export must restore the training flag"
    _assert_parity(model.eval(), path, torch.randn(2, 3, 64, 64))


def test_fixed_batch_export(tmp_path: Path) -> None:
    model = _randomise_bn(TinyNet()).eval()
    path = export_onnx(model, tmp_path / "fixed.onnx", (3, 16, 16), dynamic_batch=False)
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 16, 16]
    _assert_parity(model, path, torch.randn(3, 3, 16, 16))  # run one sample at a time


def test_int8_export_is_quantised_smaller_and_runs(tmp_path: Path) -> None:
    model = _randomise_bn(model_from_name("stresnet_pico", num_classes=10))
    fp32 = export_onnx(model, tmp_path / "pico.onnx", (3, 32, 32))
    int8 = quantize_int8(fp32, tmp_path / "pico_int8.onnx", torch.randn(32, 3, 32, 32))
    ops = onnx_ops(int8)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert "QuantizeLinear" not in onnx_ops(fp32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert out.shape == ref.shape and torch.isfinite(out).all()
    # loose: a broken quantisation (wrong scales, zeroed tensors) is off by ~100 %, int8 noise by a few %
    assert float((out - ref).norm() / ref.norm()) < 0.5


def test_int8_file_stores_every_weight_in_one_byte(tmp_path: Path) -> None:
    """int8 is about 4x smaller than fp32: on a 1.4 M-param model, where scales, biases and graph are a
    few %, the file is under 0.3 of fp32 (0.25 ideal) and the int8 initialisers hold every weight."""
    import onnx
    from onnx import numpy_helper

    model = model_from_name("stresnet18_8x", num_classes=10).eval()
    n_params = sum(p.numel() for p in model.parameters())
    fp32 = export_onnx(model, tmp_path / "8x.onnx", (3, 32, 32))
    int8 = quantize_int8(fp32, tmp_path / "8x_int8.onnx", torch.randn(8, 3, 32, 32))
    by_dtype: dict[str, int] = {}
    for init in onnx.load(str(int8)).graph.initializer:
        arr = numpy_helper.to_array(init)
        by_dtype[str(arr.dtype)] = by_dtype.get(str(arr.dtype), 0) + arr.nbytes
    assert by_dtype.get("int8", 0) + by_dtype.get("uint8", 0) >= 0.95 * n_params  # BN params fold away
    assert by_dtype.get("float32", 0) < 0.02 * fp32.stat().st_size
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size


def test_quantize_rejects_a_bad_calibration_batch(tmp_path: Path) -> None:
    fp32 = export_onnx(TinyNet().eval(), tmp_path / "t.onnx", (3, 16, 16))
    with pytest.raises(ValueError, match="calib_images"):
        quantize_int8(fp32, tmp_path / "q.onnx", torch.randn(3, 16, 16))


def test_onnx_accuracy_matches_pytorch_accuracy(tmp_path: Path) -> None:
    from PIL import Image

    from stresnet.evaluate import accuracy

    g = torch.Generator().manual_seed(0)
    for c in range(3):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            img = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(img).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    model = _randomise_bn(TinyNet(num_classes=3)).eval()
    path = export_onnx(model, tmp_path / "t.onnx", (3, 16, 16))
    got = onnx_accuracy(path, tmp_path / "data", 16, batch_size=5)
    want = accuracy(model, tmp_path / "data", 16, batch_size=5)
    assert got["images"] == want["images"] == 12
    assert got["top1"] == pytest.approx(want["top1"]) and got["top5"] == pytest.approx(want["top5"])


def test_bench_latency_returns_every_key_for_two_models() -> None:
    models = {"big": TinyNet(width=16).eval(), "small": TinyNet(width=8).eval()}
    threads = torch.get_num_threads()
    res = bench_latency(models, (3, 16, 16), threads=1, warmup=1, iters=3, baseline="big", rounds=3)
    assert torch.get_num_threads() == threads
    assert set(res["models"]) == {"big", "small"}
    for name, row in res["models"].items():
        assert row["macs"] == profile(models[name], (3, 16, 16)).macs
        for backend in ("torch", "onnxruntime"):
            r = row[backend]
            assert r["samples"] == 3
            assert {"median_ms", "p90_ms", "speedup", "efficiency"} <= set(r)
            assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    big, small = res["models"]["big"], res["models"]["small"]
    assert big["mac_ratio"] == 1.0 and big["torch"]["speedup"] == 1.0
    assert small["mac_ratio"] == pytest.approx(big["macs"] / small["macs"])
    assert small["onnxruntime"]["efficiency"] == pytest.approx(small["onnxruntime"]["speedup"] / small["mac_ratio"])
    json.dumps(res)
    text = format_latency(res)
    assert "small" in text and "speedup" in text


def test_warm_up_runs_its_count_and_then_until_its_time_has_passed() -> None:
    """A small layer's few warm-up runs end before an idle core is back (see WARMUP_MS): the warm-up lasts a
    least time as well as a count. A fake clock that each run moves by 1 ms."""
    from stresnet.deploy.latency import _warm_up

    now = [0.0]

    def run() -> None:
        now[0] += 1e-3

    assert _warm_up(run, 3, 10.0, clock=lambda: now[0]) == 10  # the time floor decides
    assert _warm_up(run, 12, 10.0, clock=lambda: now[0]) == 12  # the count decides
    assert _warm_up(run, 2, 0.0, clock=lambda: now[0]) == 2


def test_bench_latency_needs_the_baseline_among_the_models() -> None:
    with pytest.raises(ValueError, match="baseline"):
        bench_latency({"a": TinyNet()}, (3, 16, 16), iters=1, baseline="resnet18")


def test_mcu_report_uses_cost_profile_and_budgets() -> None:
    models = {"big": TinyNet(width=32).eval(), "small": TinyNet(width=8).eval()}
    p_big, p_small = profile(models["big"], (3, 32, 32)), profile(models["small"], (3, 32, 32))
    # budgets between the two models: small fits both, big fits neither
    flash_mid = (p_big.flash_bytes + p_small.flash_bytes) / 2 / 1024
    ram_mid = (p_big.peak_ram_bytes + p_small.peak_ram_bytes) / 2 / 1024
    assert p_small.flash_bytes < flash_mid * 1024 < p_big.flash_bytes
    exact = p_big.flash_bytes / 1024  # a budget equal to the need fits
    res = mcu_report(models, resolutions=(32, 16), flash_budgets_kib=(flash_mid, exact),
                     ram_budgets_kib=(ram_mid, 1e6))
    rows = {(r["model"], r["resolution"]): r for r in res["rows"]}
    assert set(rows) == {("big", 32), ("big", 16), ("small", 32), ("small", 16)}
    for (name, res_px), r in rows.items():
        p = profile(models[name], (3, res_px, res_px))
        assert (r["params"], r["macs"], r["flash_bytes"], r["peak_ram_bytes"]) == (
            p.params, p.macs, p.flash_bytes, p.peak_ram_bytes)
        assert r["flash_kib"] == p.flash_bytes / 1024 and r["peak_ram_kib"] == p.peak_ram_bytes / 1024
        assert r["ram_fits"][1e6] is True
    assert rows["small", 32]["flash_fits"] == {flash_mid: True, exact: True}
    assert rows["big", 32]["flash_fits"] == {flash_mid: False, exact: True}
    assert rows["small", 32]["ram_fits"][ram_mid] is True and rows["big", 32]["ram_fits"][ram_mid] is False
    assert rows["big", 32]["fits"][f"{exact:g}/1000000"] is True
    assert rows["big", 32]["fits"][f"{flash_mid:g}/1000000"] is False
    text = format_mcu(res)
    assert "yes" in text and "no" in text and "small" in text


def test_dynamo_exporter_without_onnxscript_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import onnxscript  # noqa: F401

        pytest.skip("onnxscript is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="onnxscript"):
        export_onnx(TinyNet(), tmp_path / "t.onnx", (3, 16, 16), dynamo=True)


def test_real_resnet18_onnx_accuracy_matches_pytorch(shared: Path, tmp_path: Path) -> None:
    from stresnet.evaluate import accuracy

    weights = shared / "models" / "resnet18_imagenette.safetensors"
    val = shared / "data" / "imagenette2-160" / "val"
    if not weights.is_file() or not val.is_dir():
        pytest.skip("shared resnet18 weights or Imagenette val absent")
    model = model_from_name("resnet18", num_classes=10, checkpoint=weights)
    path = export_onnx(model, tmp_path / "r18.onnx", (3, 128, 128))
    got = onnx_accuracy(path, val, 128, batch_size=32, limit=1)
    want = accuracy(model, val, 128, batch_size=32, limit=1)
    assert got["images"] == want["images"] == 32
    assert got["top1"] == pytest.approx(want["top1"]) and got["top1"] > 0.5


def test_bench_int8_scores_fp32_and_int8_on_val_with_calibration_from_train(tree: Path) -> None:
    from stresnet.evaluate import accuracy

    model = _randomise_bn(TinyNet(num_classes=3)).eval()
    result = bench_int8({"tiny": model}, tree / "val", tree / "train", size=16, calib_images=8)
    row = result["models"]["tiny"]
    want = accuracy(model, tree / "val", 16)
    assert row["fp32"]["images"] == row["int8"]["images"] == want["images"] == 12
    assert row["fp32"]["top1"] == pytest.approx(want["top1"])  # the fp32 file scores what PyTorch scores
    assert row["parity_max_abs"] < 1e-4
    assert row["drop_points"] == pytest.approx(100 * (row["fp32"]["top1"] - row["int8"]["top1"]))
    assert row["int8_bytes"] < row["fp32_bytes"] or row["fp32_bytes"] < 20_000  # tiny nets are mostly header
    assert result["calib_images"] == 8
    table = format_int8(result)
    assert "tiny" in table and "int8 top-1" in table


def test_bench_int8_cli_needs_tagged_published_names(tree: Path, capsys) -> None:
    from stresnet.cli import main

    assert main(["bench", "int8", "resnet18", "--data", str(tree)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'resnet18'" in err[0] and "arch.tag" in err[0]


def test_latency_table_warns_only_when_other_processes_competed() -> None:
    res = bench_latency({"a": TinyNet().eval()}, (3, 16, 16), threads=1, warmup=1, iters=2, baseline="a", rounds=1)
    assert res["env"]["other_processes_cores"] is None or res["env"]["other_processes_cores"] >= 0
    res["env"]["other_processes_cores"] = 0.05
    assert "warning" not in format_latency(res)
    res["env"]["other_processes_cores"] = 1.3
    assert "warning: other processes used 1.30 cores" in format_latency(res)
