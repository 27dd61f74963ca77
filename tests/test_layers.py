"""Factorised layers reproduce the original conv at full rank, for every conv geometry of timm resnet18."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from stresnet import decompose as dec
from stresnet import layers as L


def _resnet18_convs() -> list[tuple[str, nn.Conv2d]]:
    """The first conv of each geometry (kernel shape, stride, padding): a factorisation sees nothing else of a
    conv, and the repeats (three 512x512x3x3 convs alone took 14 s) would test the same thing again."""
    model = timm.create_model("resnet18", num_classes=10)
    convs: dict[tuple, tuple[str, nn.Conv2d]] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            convs.setdefault((tuple(m.weight.shape), m.stride, m.padding), (n, m))
    return list(convs.values())


CONVS = _resnet18_convs()


def _rel_err(layer: nn.Module, conv: nn.Conv2d) -> float:
    x = torch.randn(2, conv.in_channels, 20, 20)
    with torch.no_grad():
        ref, out = conv(x), layer(x)
    assert out.shape == ref.shape
    return float((out - ref).norm() / ref.norm())


def _full_ranks_tt3(conv: nn.Conv2d) -> list[int]:
    c_out, c_in, kh, kw = conv.weight.shape
    return dec.tt_rank_bounds((c_out, kh * kw, c_in))


def _factors(conv: nn.Conv2d) -> list[list[int]]:
    return [list(dec.balanced_factors(conv.out_channels)), list(dec.balanced_factors(conv.in_channels))]


@pytest.mark.parametrize("name,conv", CONVS, ids=[n for n, _ in CONVS])
def test_full_rank_layers_are_exact(name: str, conv: nn.Conv2d) -> None:
    c_out, c_in = conv.out_channels, conv.in_channels
    (o1, o2), (i1, i2) = _factors(conv)
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    layers = {
        "tucker2": L.Tucker2Conv2d.from_conv(conv, [c_out, c_in]),
        "tt3": L.TTConv2d.from_conv(conv, _full_ranks_tt3(conv)),
        "tt5": L.TT5Conv2d.from_conv(conv, dec.tt_rank_bounds((o1, o2, kk, i1, i2)), _factors(conv)),
        "lrs": L.LowRankSparseConv2d.from_conv(conv, [c_out, c_in], density=0.1),
        "lrs_dense_residual": L.LowRankSparseConv2d.from_conv(conv, [max(1, c_out // 4), max(1, c_in // 4)], 1.0),
        "svd": L.LowRankConv2d.from_conv(conv, min(c_out, c_in * kk)),
    }
    for kind, layer in layers.items():
        assert _rel_err(layer, conv) < 1e-4, f"{name} {kind}"


def test_truncation_error_falls_with_rank() -> None:
    conv = dict(CONVS)["layer3.0.conv2"]
    bases = dec.mode_bases(conv.weight)
    errs = [_rel_err(L.Tucker2Conv2d.from_conv(conv, [r, r], bases=bases), conv) for r in (16, 64, 128, 256)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4 < errs[0]


def test_hooi_sweeps_do_not_worsen_hosvd() -> None:
    w = torch.randn(64, 32, 3, 3)
    hosvd = dec.tucker2_to_tensor(*dec.tucker2(w, [16, 8]))
    hooi = dec.tucker2_to_tensor(*dec.tucker2(w, [16, 8], n_iter=3))
    assert (hooi - w).norm() <= (hosvd - w).norm() + 1e-6


def test_factorised_layers_are_plain_modules_and_count_params() -> None:
    conv = nn.Conv2d(64, 128, 3, stride=2, padding=1)
    layer = L.Tucker2Conv2d.from_conv(conv, [32, 16])
    leaf_types = {type(m) for m in layer.modules() if not list(m.children())}
    assert leaf_types == {nn.Conv2d}
    assert sum(p.numel() for p in layer.parameters()) == 64 * 16 + 16 * 32 * 9 + 32 * 128 + 128
    assert layer(torch.randn(1, 64, 16, 16)).shape == (1, 128, 8, 8)
    assert layer.spec() == {"type": "tucker2", "ranks": [32, 16]}


def test_low_rank_linear_full_rank_is_exact_and_truncates() -> None:
    fc = nn.Linear(96, 40)
    x = torch.randn(5, 96)
    assert torch.allclose(L.LowRankLinear.from_linear(fc, 40)(x), fc(x), atol=1e-5)
    assert not torch.allclose(L.LowRankLinear.from_linear(fc, 8)(x), fc(x), atol=1e-3)


def test_lrs_keeps_requested_density_of_the_residual() -> None:
    conv = nn.Conv2d(32, 32, 3, padding=1)
    layer = L.LowRankSparseConv2d.from_conv(conv, [8, 8], density=0.25)
    assert layer.sparse.mask.sum().item() == round(0.25 * conv.weight.numel())
    # the sparse part makes the layer closer to the original than its low-rank part alone
    assert _rel_err(layer, conv) < _rel_err(layer.lowrank, conv)
