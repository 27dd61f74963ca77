"""The search on any timm CNN: each layer kind gets the factorisations that suit it, the rest is skipped with why.

Random weights, 16 random 64x64 calibration images with random labels: a 2x search per architecture
(plain, bottleneck, inverted-residual with SE, depthwise-separable, grouped with SE, ConvNeXt with linear
MLPs), the compressed model runs, reads back its plan and exports to ONNX with parity.
"""
from __future__ import annotations

import copy
from collections import Counter

import pytest
import timm
import torch
from torch import nn

from stresnet.deploy.export import export_onnx, onnx_parity
from stresnet.plan import compress, plan_of
from stresnet.search.budgets import parse_budget
from stresnet.search.pipeline import build_space, run_search, searched_plan
from stresnet.search.report import write_search

# resnet26: ResNet-50's bottleneck blocks at its widths (up to 2048 channels), two per stage instead of 3-6
ARCHS = ["resnet26", "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_lite0", "regnety_002", "convnext_atto"]
DEPTHWISE = {"mobilenetv3_large_100", "efficientnet_b0", "efficientnet_lite0", "regnety_002", "convnext_atto"}
SIZE = 64
STEP = 32  # a coarse rank grid keeps the bottleneck ResNet's Tucker-2 tables and ILP small


def _calibration(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                                              and module.groups == 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_2x_search_compresses_runs_and_exports(arch: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    images, labels = _calibration()
    space = build_space(model, images, labels, step=STEP, progress=False, space="any")
    plan = searched_plan(space, parse_budget("2x"))
    modules = dict(model.named_modules())

    # each kind got the options that suit it
    offered = {n: {o.spec["type"] for o in opts} for n, opts in space.options.items()}
    for name, types in offered.items():
        m = modules[name]
        if _is_pointwise(m):
            assert "tucker2" not in types, name  # a matrix: two SVD factors, not three layers
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert types <= {"full", "sparse"}, name
    assert any(_is_pointwise(modules[n]) and s["type"] == "svd" for n, s in plan.layers.items())
    if arch in DEPTHWISE:
        assert any("sparse" in t for t in offered.values())
    for name, reason in space.skipped.items():
        assert isinstance(reason, str) and reason, name
    assert space.size(plan) <= space.base_cost["params"] / 2

    compressed = compress(copy.deepcopy(model), plan, bases=space.bases).eval()
    assert plan_of(compressed).layers == plan.layers
    with torch.no_grad():
        assert compressed(images[:2]).shape == (2, 10)
    path = export_onnx(compressed, tmp_path / f"{arch}.onnx", input_size=(3, SIZE, SIZE))
    assert onnx_parity(compressed, path, images[:2]) < 1e-4


class Odd(nn.Module):
    """A conv per reason to skip, beside plain layers the search takes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.same = nn.Conv2d(32, 32, 1, padding="same")
        self.circular = nn.Conv2d(32, 32, 1, padding_mode="circular")
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 256, 1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.circular(self.same(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_modules_no_type_fits_are_skipped_with_the_reason_in_the_report(tmp_path) -> None:
    torch.manual_seed(0)
    images, labels = _calibration(8)
    model = Odd().eval()
    space = build_space(model, images[:, :, :16, :16], labels, step=8, progress=False, space="any")
    assert set(space.skipped) == {"same", "circular", "unused"}
    assert "padding" in space.skipped["same"] and "circular" in space.skipped["circular"]
    assert "captured" in space.skipped["unused"]
    assert set(space.options) == {"stem", "dw", "pw", "head"}
    kinds = {n: Counter(o.spec["type"] for o in opts) for n, opts in space.options.items()}
    assert kinds["dw"]["sparse"] and kinds["pw"]["svd"] and kinds["head"]["svd"] and kinds["stem"]["tucker2"]
    # the baselines size Tucker-2 on kxk convs, an SVD on matrices (1x1 convs, linears), leave grouped convs full
    result = run_search(space, [parse_budget("1.5x")])
    for plans in result.baselines.values():
        for p in plans.values():
            assert all(s["type"] == ("svd" if n in ("head", "pw") else "tucker2") for n, s in p.layers.items())
            assert "dw" not in p.layers and "stem" not in p.layers  # the stem stays full in every baseline
    report = write_search(result, tmp_path, {"arch": "odd"})
    assert report["skipped"] == space.skipped


def test_the_sparse_estimate_is_the_calibration_error_of_the_pruned_conv() -> None:
    from stresnet.layers.sparse import MaskedConv2d
    from stresnet.search.estimator import group_patch_moments, sparse_loss

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, groups=4).double()
    x = torch.randn(4, 16, 8, 8, dtype=torch.float64)
    moments = group_patch_moments(conv, x.float(), max_patches=10**9)
    pruned = MaskedConv2d.from_conv(conv, 0.3)
    with torch.no_grad():
        err = ((pruned(x) - conv(x)) ** 2).sum()
        energy = ((conv(x) - conv.bias[:, None, None]) ** 2).sum()
    assert sparse_loss(conv.weight, moments, 0.3) == pytest.approx(float(err / energy), rel=1e-4)
    assert sparse_loss(conv.weight, moments, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_the_default_space_is_the_papers_the_zoo_plans_were_searched_in() -> None:
    """``compressnas`` (the default): every ungrouped conv, 1x1 downsamples included, as Tucker-2 only; the
    classifier is left alone and the report says why. This is what keeps the zoo's ResNet-18 plans regenerating."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    images, labels = _calibration(8)
    space = build_space(model, images[:, :, :32, :32], labels, step=64, progress=False)
    assert set(space.options) == {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {o.spec["type"] for opts in space.options.values() for o in opts} == {"full", "tucker2"}
    assert any(o.spec["type"] == "tucker2" for o in space.options["layer4.0.downsample.0"])
    assert "'compressnas'" in space.skipped["fc"]
    with pytest.raises(ValueError, match="unknown search space 'all'"):
        build_space(model, images[:, :, :32, :32], labels, step=64, progress=False, space="all")
