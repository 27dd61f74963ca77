"""The one-pass error table equals the MSE measured by running each truncated layer."""
from __future__ import annotations

import torch
from torch import nn

from stresnet import decompose as dec
from stresnet.layers import Tucker2Conv2d
from stresnet.search.estimator import capture_inputs, patch_moment, rank_grid, tucker2_error_table


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
