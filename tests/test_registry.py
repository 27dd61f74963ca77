"""The factorisation registry: every type's analytic cost is what its built module measures, and a new
type registered from outside the package works through compress, plan_of, build + load_weights,
profile and the search's options."""
from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stresnet import Plan, PlanError, build, compress, load_weights, plan_of
from stresnet import decompose as dec
from stresnet.cost import module_cost, plan_params, profile
from stresnet.layers import registry
from stresnet.layers.registry import BYTES_PER_CHANNEL, Factorisation, LayerGeometry, check_positive_ranks
from stresnet.search.estimator import ErrorTable
from stresnet.search.options import layer_options

# (module, spec, input spatial size) for every built-in type, on odd geometries (stride, bias, groups, tokens)
CASES = [
    (nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=True), {"type": "tucker2", "ranks": [8, 5]}, (9, 11)),
    (nn.Conv2d(16, 24, 3, padding=1), {"type": "tt", "ranks": [7, 6]}, (8, 8)),
    (nn.Conv2d(16, 24, 3, padding=1, bias=True),
     {"type": "tt", "ranks": [3, 5, 6, 2], "factors": [[4, 6], [4, 4]]}, (8, 8)),
    (nn.Conv2d(16, 24, 5, stride=2, padding=2), {"type": "svd", "rank": 9}, (10, 10)),
    (nn.Linear(40, 30), {"type": "svd", "rank": 7}, (1, 1)),
    (nn.Conv2d(32, 32, 3, padding=1, groups=32), {"type": "sparse", "density": 0.3}, (7, 7)),
    (nn.Conv2d(16, 24, 3, padding=1, bias=True), {"type": "sparse", "density": 0.25}, (6, 6)),
    (nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=True), {"type": "lrs", "ranks": [8, 6], "density": 0.05}, (8, 8)),
    (nn.Conv2d(16, 24, 1), {"type": "full"}, (5, 5)),
]


@pytest.mark.parametrize("module,spec,hw", CASES, ids=[f"{c[1]['type']}-{i}" for i, c in enumerate(CASES)])
def test_each_types_formula_is_what_its_module_costs(module: nn.Module, spec: dict, hw: tuple[int, int]) -> None:
    fact = registry.for_spec(spec)
    built = fact.build(module, spec, init="decompose")
    shape = (module.in_features,) if isinstance(module, nn.Linear) else (module.in_channels, *hw)
    measured = module_cost(built, shape)
    formula = fact.cost(LayerGeometry.of(module, hw), spec)
    assert {k: formula[k] for k in ("params", "flash", "macs")} == measured
    assert fact.params(module, spec) == measured["params"]
    if spec["type"] != "full":
        assert plan_spec_of(built) == spec


def plan_spec_of(module: nn.Module) -> dict:
    holder = nn.Sequential(OrderedDict(layer=module))
    return plan_of(holder).layers["layer"]


def test_tt_specs_pick_their_layout_and_unknown_types_name_the_registered_ones() -> None:
    assert registry.for_spec({"type": "tt", "ranks": [4, 4]}).name == "tt"
    assert registry.for_spec({"type": "tt", "ranks": [1, 2, 3, 4], "factors": [[2, 2], [2, 2]]}).name == "tt5"
    with pytest.raises(registry.SpecError, match="unknown type 'cp'.*tucker2"):
        registry.for_spec({"type": "cp"})
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("tucker2"))


# ---------------------------------------------------------------------------------------------- a toy type


class InputFirstConv2d(nn.Sequential):
    """``1x1 C_in->r`` then ``kxk r->C_out``: the SVD of the kernel taken the other way round."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__(OrderedDict(
            first=nn.Conv2d(conv.in_channels, rank, 1, bias=False),
            core=nn.Conv2d(rank, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                           bias=conv.bias is not None),
        ))

    def spec(self) -> dict:
        return {"type": "inputfirst", "rank": self.first.out_channels}


class InputFirst(Factorisation):
    name = spec_type = "inputfirst"
    builds = (InputFirstConv2d,)
    searchable = True

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_positive_ranks([spec.get("rank")])

    def ranks(self, spec: Mapping[str, Any]) -> list[int]:
        return [spec["rank"]]

    def rank_limits(self, module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
        return [("rank", module.in_channels)]

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose",
              bases: Any = None) -> nn.Module:
        layer = InputFirstConv2d(module, spec["rank"])
        if init == "decompose":
            c_out, c_in, kh, kw = module.weight.shape
            # W as (C_out*k*k, C_in) = A @ B: B is the 1x1 conv, A the kxk one
            a, b = dec.svd(module.weight.permute(0, 2, 3, 1).reshape(-1, c_in), spec["rank"])
            with torch.no_grad():
                layer.first.weight.copy_(b[:, :, None, None])
                layer.core.weight.copy_(a.reshape(c_out, kh, kw, -1).permute(0, 3, 1, 2))
                if module.bias is not None:
                    layer.core.bias.copy_(module.bias)
        return layer

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> dict[str, float]:
        r = spec["rank"]
        weights = g.c_in * r + r * g.c_out * g.kk
        return {"params": weights + g.c_out * g.bias, "flash": weights + BYTES_PER_CHANNEL * (r + g.c_out),
                "macs": g.hw_in * g.c_in * r + g.hw_out * r * g.c_out * g.kk,
                "ram": max((g.c_in + r) * g.hw_in, r * g.hw_in + g.c_out * g.hw_out)}

    def candidates(self, g: LayerGeometry, loss: Callable[[int, int], float] | None, in_grid: Sequence[int],
                   tied: bool, step: int, stats: Any = None) -> list[tuple[dict, float]]:
        if loss is None:
            return []
        return [({"type": "inputfirst", "rank": r}, loss(g.c_out, r)) for r in in_grid if r < g.c_in]


@pytest.fixture
def toy_type():
    fact = registry.register(InputFirst())
    yield fact
    registry.unregister(fact.name)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_a_type_registered_outside_the_package_works_end_to_end(toy_type: Factorisation, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = Tiny().eval()
    layers = {"conv2": {"type": "inputfirst", "rank": 16}}  # full rank: exact
    x = torch.randn(2, 3, 12, 12)
    model = compress(copy.deepcopy(base), {"layers": layers})
    assert isinstance(model.conv2, InputFirstConv2d)
    torch.testing.assert_close(model(x), base(x), rtol=1e-4, atol=1e-5)
    assert plan_of(model).layers == layers

    # build + load_weights: a plan whose base is a registered timm-style factory
    weights = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    rebuilt = load_weights(build(Plan(layers=layers, base={"arch": "tiny"}), create=lambda arch: Tiny()), weights)
    torch.testing.assert_close(rebuilt.eval()(x), model(x))

    # profile and plan_params count it by its structure and its formula alike
    prof = profile(model, (3, 12, 12))
    assert prof.params == sum(p.numel() for p in model.parameters()) == plan_params(base, Plan(layers=layers))
    dense = profile(base, (3, 12, 12))
    toy_cost = toy_type.cost(LayerGeometry.of(base.conv2, (12, 12)), layers["conv2"])
    full_cost = LayerGeometry.of(base.conv2, (12, 12)).full_cost()
    assert prof.macs == dense.macs - full_cost["macs"] + toy_cost["macs"]

    # its rank limits and spec checks are the plan's errors, naming the layer
    with pytest.raises(PlanError, match=r"layer 'conv2': rank rank=17 exceeds the mode size 16"):
        compress(Tiny(), {"layers": {"conv2": {"type": "inputfirst", "rank": 17}}})
    with pytest.raises(PlanError, match=r"layer 'conv1': rank 0 must be a positive integer"):
        compress(Tiny(), {"layers": {"conv1": {"type": "inputfirst", "rank": 0}}})


def test_the_search_offers_a_registered_searchable_type(toy_type: Factorisation) -> None:
    shape = LayerGeometry.of(nn.Conv2d(32, 32, 3, padding=1), (8, 8))
    grid = (8, 16, 24, 32)
    err = torch.linspace(1, 0, 32)[:, None].repeat(1, len(grid)).numpy()
    table = ErrorTable(err, grid)
    options = layer_options(shape, table, tied=True, step=8)
    toy = [o for o in options if o.spec["type"] == "inputfirst"]
    assert [o.spec["rank"] for o in toy] == [8, 16, 24]  # full rank 32 saves nothing: not offered
    for o in toy:
        assert o.cost == toy_type.cost(shape, o.spec) and o.cost["params"] < shape.full_cost()["params"]
        assert o.loss == table(32, o.spec["rank"])
    assert any(o.spec["type"] == "tucker2" for o in options)
    registry.unregister("inputfirst")
    assert not any(o.spec["type"] == "inputfirst" for o in layer_options(shape, table, tied=True, step=8))
