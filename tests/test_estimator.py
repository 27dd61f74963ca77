"""The one-pass error table equals the MSE measured by running each truncated layer."""
from __future__ import annotations

import torch
from torch import nn

from stresnet import decompose as dec
from stresnet.layers import LowRankConv2d, LowRankLinear, Tucker2Conv2d
from stresnet.search.estimator import (calibrated_bases, capture_inputs, patch_moment, rank_grid,
                                       tucker2_error_table)


def _measured(conv: nn.Conv2d, x: torch.Tensor, bases: dec.ModeBases, r_out: int, r_in: int) -> float:
    with torch.no_grad():
        ref = conv(x).double()
        out = Tucker2Conv2d.from_conv(conv, [r_out, r_in], bases=bases)(x).double()
    return float((out - ref).square().sum() / ref.square().sum())


def test_error_table_matches_measured_output_mse() -> None:
    conv = nn.Conv2d(24, 20, 3, stride=2, padding=1, bias=False)
    x = torch.relu(torch.randn(6, 24, 9, 9))  # non-centred, like post-ReLU features
    bases = dec.mode_bases(conv.weight)
    table = tucker2_error_table(bases, patch_moment(conv, x, max_patches=10**9), rank_grid(24, 8))
    assert table.in_grid == (8, 16, 24)
    for r_out in (1, 5, 8, 20):
        for r_in in (8, 16, 24):
            assert abs(table(r_out, r_in) - _measured(conv, x, bases, r_out, r_in)) < 1e-6
    assert table(20, 24) < 1e-9


def _features(n: int, c: int, hw: int) -> torch.Tensor:
    """Post-ReLU-like inputs whose channels differ in scale (what calibration exploits)."""
    return torch.relu(torch.randn(n, c, hw, hw)) * torch.linspace(0.05, 3.0, c)[None, :, None, None]


def test_calibrated_table_matches_the_calibrated_layers_it_scores() -> None:
    torch.manual_seed(0)
    for conv in (nn.Conv2d(24, 20, 3, stride=2, padding=1, bias=False), nn.Conv2d(40, 16, 1, bias=False)):
        x = _features(6, conv.in_channels, 9)
        moment = patch_moment(conv, x, max_patches=10**9)
        bases = dec.mode_bases(conv.weight, moment)
        assert bases.calibrated
        table = tucker2_error_table(bases, moment, rank_grid(conv.in_channels, 8))
        for r_out in (1, 5, 8, 16):
            for r_in in table.in_grid:
                assert abs(table(r_out, r_in) - _measured(conv, x, bases, r_out, r_in)) < 1e-6


def test_calibrated_svd_has_less_output_error_than_the_weights_own() -> None:
    """The point of calibration: at every rank the data-fitted projection loses less of the layer's output on
    the data than the weight-only SVD truncation; for a 1x1 conv a Tucker-2 with ``r_in >= r_out`` is the same
    projection (the QR input basis keeps the kept rows whole)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 32, 1, bias=False)
    x = _features(8, 48, 6)
    bases = dec.mode_bases(conv.weight, patch_moment(conv, x))
    with torch.no_grad():
        ref = conv(x)
        for r in (4, 8, 16, 24):
            plain = (LowRankConv2d.from_conv(conv, r)(x) - ref).square().sum()
            fitted = (LowRankConv2d.from_conv(conv, r, bases=bases)(x) - ref).square().sum()
            assert fitted < 0.9 * plain
            tucker = Tucker2Conv2d.from_conv(conv, [r, r + 4], bases=bases)(x)
            assert torch.allclose(tucker, LowRankConv2d.from_conv(conv, r, bases=bases)(x), atol=1e-4)


def test_calibrated_bases_cover_ungrouped_convs_and_linears_of_a_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.Conv2d(16, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))
    images = torch.randn(4, 3, 8, 8)
    bases = calibrated_bases(model, ["0", "2", "3", "6"], images)
    assert sorted(bases) == ["0", "3", "6"]  # the depthwise conv has no channel modes
    assert all(b.calibrated for b in bases.values())
    linear = LowRankLinear.from_linear(model[6], 4, bases=bases["6"])
    feats = model[:6](images)
    with torch.no_grad():
        err = (linear(feats) - model[6](feats)).square().sum()
        plain = (LowRankLinear.from_linear(model[6], 4)(feats) - model[6](feats)).square().sum()
    assert err <= plain + 1e-6


def test_error_falls_as_ranks_grow() -> None:
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    x = torch.randn(4, 32, 8, 8)
    table = tucker2_error_table(dec.mode_bases(conv.weight), patch_moment(conv, x), rank_grid(32, 8))
    assert (table.err[1:] <= table.err[:-1] + 1e-12).all()  # more output rank, less error
    assert (table.err[:, 1:] <= table.err[:, :-1] + 1e-12).all()  # more input rank, less error


def test_capture_inputs_keeps_each_modules_input() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(5, 3, 10, 10)
    got = capture_inputs(model, ["0", "2"], x, batch_size=2)
    assert torch.equal(got["0"], x)
    assert torch.allclose(got["2"], torch.relu(model[0](x)))


def test_fisher_table_with_isotropic_gradients_is_the_unnormalised_mse() -> None:
    conv = nn.Conv2d(16, 12, 3, padding=1, bias=False)
    x = torch.randn(3, 16, 6, 6)
    bases = dec.mode_bases(conv.weight)
    moment = patch_moment(conv, x)
    plain = tucker2_error_table(bases, moment, rank_grid(16, 8))
    fisher = tucker2_error_table(bases, moment, rank_grid(16, 8), grad_moment=2.0 * torch.eye(12), scale=0.5)
    with torch.no_grad():
        energy = float(conv(x).double().square().sum())
    assert abs(fisher(4, 8) - plain(4, 8) * energy) < 1e-6 * energy


def test_output_grad_moments_are_gram_matrices_of_the_loss_gradient() -> None:
    from stresnet.search.estimator import output_grad_moments

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    got = output_grad_moments(model, ["0"], x, y, batch_size=4)["0"]
    out = model[0](x).detach().requires_grad_(True)
    nn.functional.cross_entropy(model[2](model[1](out)), y, reduction="sum").backward()
    g = out.grad.transpose(0, 1).reshape(4, -1).double()
    assert torch.allclose(got, g @ g.T, atol=1e-8)
    assert all(p.requires_grad for p in model.parameters())  # flags restored
