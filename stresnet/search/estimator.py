"""Fast accuracy estimator: the normalised output MSE of each factorised option, on calibration data.

CompressNAS scores an option by the MSE between the decomposed layer's output
and the original layer's output on a calibration batch. Running the
decomposed layer for every candidate rank would cost one forward pass per
option; instead we use that a conv is linear in its input patches:

    || (W - W_r) * X ||^2 = tr( (W - W_r) S (W - W_r)^T ),   S = sum of patch outer products

and that a HOSVD truncation keeps a leading block of the core ``G`` expressed
in the two mode bases. With ``S~`` the patch second-moment matrix rotated into
the input basis, the error of keeping output rank ``a`` and input rank ``b`` is

    err(a, b) = sum_{o < a} t_o(b) + sum_{o >= a} g_o^T S~ g_o,   t_o(b) = g_{o,>=b}^T S~_{>=b,>=b} g_{o,>=b}

and ``t_o(b)`` grows block by block down the input-rank grid, so ONE pass per
layer yields the exact calibration MSE for every (a, b) pair: tied or free
ranks, any grid. Errors are divided by the layer's output energy (``total``)
so layers of different scale are comparable in one objective.

A linear layer is a 1x1 conv over its tokens (every leading dim flattened), so
the same table serves it; for a matrix the Tucker-2 truncation at ``(r, r)`` keeps
both top singular subspaces, i.e. it IS the rank-``r`` SVD truncation. Grouped and
depthwise convs have no channel modes to cut; magnitude pruning is scored from the
same statistics, each output channel against its own group's patch moment
(:func:`group_patch_moments`, :func:`sparse_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import decompose as dec
from ..layers.common import topk_mask
from ..utils.modes import eval_mode

__all__ = ["capture_inputs", "output_grad_moments", "patch_moment", "group_patch_moments", "ErrorTable",
           "tucker2_error_table", "sparse_loss", "LayerStats", "rank_grid", "as_kernel", "calibrated_bases"]


def rank_grid(dim: int, step: int = 8) -> list[int]:
    """Candidate ranks ``step, 2*step, ...`` below ``dim``, plus ``dim`` itself (full rank of that mode)."""
    grid = list(range(step, dim, step))
    return grid + [dim] if dim > 0 else grid


@torch.no_grad()
def capture_inputs(model: nn.Module, names: Iterable[str], images: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
    """Run ``images`` through ``model`` and keep the input of each named module.

    A module not called exactly once per batch (unused, or shared and called several
    times) has no single input: it is left out of the result (the caller says why).
    """
    names = list(names)
    store: dict[str, list[Tensor]] = {n: [] for n in names}
    batches = 0
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: store[n].append(args[0].detach()))
        for n in names
    ]
    try:
        with eval_mode(model):
            for i in range(0, len(images), batch_size):
                model(images[i : i + batch_size])
                batches += 1
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items() if len(v) == batches}


def output_grad_moments(
    model: nn.Module, names: Iterable[str], images: Tensor, labels: Tensor, batch_size: int = 32
) -> dict[str, Tensor]:
    """Per named module, ``sum g g^T`` over samples and positions of the cross-entropy gradient w.r.t. its output.

    This is the (empirical, channel-block) Fisher information of each layer's
    output: it says how much an output error in each direction moves the loss,
    which the plain feature MSE cannot see (e.g. errors the classifier ignores).
    """
    names = list(names)
    moments: dict[str, Tensor] = {}

    def keep_grad(name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            linear = isinstance(module, nn.Linear)  # channels last: (..., F); a conv's are dim 1

            def on_grad(g: Tensor) -> None:
                if linear:
                    g = g.detach().reshape(-1, g.shape[-1]).T.double()
                else:
                    g = g.detach().transpose(0, 1).reshape(g.shape[1], -1).double()
                moments[name] = moments.get(name, 0) + g @ g.T
            out.register_hook(on_grad)
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep_grad(n)) for n in names]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            for i in range(0, len(images), batch_size):
                x = images[i : i + batch_size].clone().requires_grad_(True)
                F.cross_entropy(model(x), labels[i : i + batch_size], reduction="sum").backward()
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return moments


def _patches(module: nn.Module, x: Tensor, max_patches: int, seed: int) -> tuple[Tensor, float]:
    """Rows of input patches (``(P, C_in*kh*kw)``, a linear's tokens ``(P, F)``), at most ``max_patches`` drawn
    with a fixed seed, and the factor that scales their moment back to the full count."""
    if isinstance(module, nn.Linear):
        cols = x.reshape(-1, x.shape[-1])
    else:
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"patch moments need zero padding given as numbers, "
                             f"got {module.padding_mode!r} / {module.padding!r}")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N * L, C_in * kh * kw)
    total = cols.shape[0]
    if total > max_patches:
        g = torch.Generator().manual_seed(seed)
        cols = cols[torch.randperm(total, generator=g)[:max_patches]]
    return cols.float(), total / cols.shape[0]


def patch_moment(conv: nn.Module, x: Tensor, max_patches: int = 16384, seed: int = 0) -> Tensor:
    """Second moment ``sum p p^T`` of the conv's input patches (float64, ``C_in*kh*kw`` square).

    Patches are unfolded with the conv's own geometry; at most ``max_patches``
    (drawn with a fixed seed) are used, scaled back to the full count. An
    ``nn.Linear`` is a 1x1 conv over its tokens.
    """
    cols, factor = _patches(conv, x, max_patches, seed)
    return (cols.T @ cols).double() * factor


def as_kernel(module: nn.Module) -> Tensor:
    """A conv's kernel, or a linear's weight as a ``1x1`` kernel (the form :func:`~stresnet.decompose.mode_bases`
    takes)."""
    return module.weight[:, :, None, None] if isinstance(module, nn.Linear) else module.weight


def calibrated_bases(model: nn.Module, names: Iterable[str], images: Tensor,
                     max_patches: int = 16384) -> dict[str, dec.ModeBases]:
    """Calibrated :func:`~stresnet.decompose.mode_bases` of the named ungrouped convs and linears of ``model``
    on ``images`` (one forward pass): what the search scored with ``calibrated=True``, for the stages that
    decompose after it. Grouped convs have no channel modes and are left out."""
    names = [n for n in names if isinstance(m := model.get_submodule(n), nn.Linear) or m.groups == 1]
    inputs = capture_inputs(model, names, images)
    return {n: dec.mode_bases(as_kernel(model.get_submodule(n)),
                              patch_moment(model.get_submodule(n), inputs.pop(n), max_patches))
            for n in names if n in inputs}


def group_patch_moments(conv: nn.Conv2d, x: Tensor, max_patches: int = 16384, seed: int = 0) -> Tensor:
    """Per group, the second moment of that group's input patches: ``(groups, C_in/g*kk, C_in/g*kk)`` float64
    (depthwise: each channel's own ``kk x kk`` moment). Only the diagonal blocks of :func:`patch_moment`."""
    cols, factor = _patches(conv, x, max_patches, seed)
    cols = cols.reshape(cols.shape[0], conv.groups, -1)  # unfold orders columns (channel, kernel position)
    return torch.einsum("pgi,pgj->gij", cols, cols).double() * factor


def sparse_loss(
    weight: Tensor, moments: Tensor, density: float, grad_diag: Tensor | None = None, scale: float | None = None
) -> float:
    """The calibration error of magnitude pruning ``weight`` (the mask :class:`~stresnet.layers.sparse.MaskedConv2d`
    builds) at ``density``: per output channel ``o``, ``(w_o*(1-m_o))^T S_g (w_o*(1-m_o))`` with ``S_g`` its group's
    patch moment (:func:`group_patch_moments`). Normalised by the output energy (the MSE table's units), or, with
    ``grad_diag`` (the diagonal of :func:`output_grad_moments`), weighted by it and times ``scale`` (the Fisher
    table's units)."""
    w = weight.detach().double()
    groups = moments.shape[0]
    res = (w * (1 - topk_mask(w, density))).reshape(groups, w.shape[0] // groups, -1)
    per = torch.einsum("goi,gij,goj->go", res, moments, res).reshape(-1)
    if grad_diag is not None:
        return float((per * grad_diag.double()).sum() * scale)
    wf = w.reshape(groups, w.shape[0] // groups, -1)
    total = torch.einsum("goi,gij,goj->", wf, moments, wf).clamp_min(1e-300)
    return float(max(per.sum() / total, 0.0))


@dataclass(frozen=True)
class LayerStats:
    """What the calibration pass measured of one layer, for every searchable type's candidates:
    the Tucker-2 table over its channel modes (ungrouped convs, linears) and/or the magnitude-pruning
    loss at a density (grouped convs)."""

    table: "ErrorTable | None" = None
    sparse: Callable[[float], float] | None = None


@dataclass(frozen=True)
class ErrorTable:
    """Normalised output MSE of Tucker-2 truncations of one layer.

    ``err[a - 1, j]`` is the error of output rank ``a`` (any ``1..C_out``) and
    input rank ``in_grid[j]``; ``err = 0`` at full rank.
    """

    err: np.ndarray
    in_grid: tuple[int, ...]

    def __call__(self, r_out: int, r_in: int) -> float:
        return float(self.err[r_out - 1, self.in_grid.index(r_in)])


def tucker2_error_table(
    bases: dec.ModeBases,
    moment: Tensor,
    in_grid: Sequence[int],
    grad_moment: Tensor | None = None,
    scale: float | None = None,
) -> ErrorTable:
    """The calibration error of every (output rank, input rank on ``in_grid``) truncation, in one pass.

    Without ``grad_moment``: the output MSE normalised by the output energy.
    With it (see :func:`output_grad_moments`): each output channel's squared error
    weighted by the loss-gradient energy along it, times ``scale`` (1 / (images^2 *
    positions) gives the estimated second moment of the per-image loss change):
    a Fisher-weighted, loss-aware version of the same table.
    """
    w = bases.weight  # float64 (C_out, C_in, kh, kw)
    c_out, c_in, kh, kw = w.shape
    kk = kh * kw
    grid = sorted(set(int(b) for b in in_grid))
    if grid[0] < 1 or grid[-1] > c_in:
        raise ValueError(f"input-rank grid {grid} out of range 1..{c_in}")
    # core in the full mode bases, flattened input side ordered (input basis vector, kernel position)
    # heavy products in float32 (errors are compared, not summed to 1e-12), accumulation in float64
    u_out, u_in = bases.u_out.float(), bases.u_in.float()
    g = torch.einsum("oik,oa,ib->abk", w.float().reshape(c_out, c_in, kk), u_out, u_in).reshape(c_out, c_in * kk)
    s = moment.float().reshape(c_in, kk * c_in * kk)
    s = (u_in.T @ s).reshape(c_in * kk * c_in, kk).T.reshape(kk, c_in * kk, c_in) # (l, a k, j)
    s = (s @ u_in).permute(1, 2, 0).reshape(c_in * kk, c_in * kk)  # rows (a, k), cols (b, l)
    full = ((g @ s) * g).sum(1).double()  # each output channel's energy
    total = full.sum().clamp_min(1e-300)
    # tail[o, j] = g_{o,>=b_j}^T S_{>=b_j,>=b_j} g_{o,>=b_j}, grown block by block from the top rank down
    tail = torch.zeros(c_out, len(grid), dtype=torch.float64)
    acc = torch.zeros(c_out, dtype=torch.float64)
    hi = c_in * kk
    for j in range(len(grid) - 1, -1, -1):
        lo = grid[j] * kk
        if lo < hi:
            g_new = g[:, lo:hi]
            cross = g[:, hi:] @ s[hi:, lo:hi]
            acc = acc + (g_new * (2 * cross + g_new @ s[lo:hi, lo:hi])).sum(1).double()
        tail[:, j] = acc
        hi = lo
    if grad_moment is not None:
        # the gradient energy along each output basis vector (diagonal in the output basis)
        weight = ((grad_moment.to(bases.u_out) @ bases.u_out) * bases.u_out).sum(0)
        tail, full = tail * weight[:, None], full * weight
        total = full.sum()
    # kept output channels o < a lose only their tail; dropped ones lose everything
    err = torch.cumsum(tail, 0) + (total - torch.cumsum(full, 0))[:, None]
    err = err * scale if grad_moment is not None else err / total
    return ErrorTable(err.clamp_min(0).numpy(), tuple(grid))

