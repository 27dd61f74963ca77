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
