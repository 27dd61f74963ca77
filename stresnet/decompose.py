"""Decompositions of trained kernels: Tucker-2 (HOSVD/HOOI), TT-SVD and truncated SVD.

A small functional API in the spirit of tensorly: pure functions on tensors, no
modules. The expensive part of Tucker-2, the two mode SVDs of a kernel, is
computed once (:func:`mode_bases`) and every candidate rank is then derived by
truncation (:func:`tucker2`), so a rank search over many candidates costs little
more than a single factorisation.

All arithmetic runs in float64 and results come back in the kernel's dtype.

References
----------
De Lathauwer, De Moor, Vandewalle, "A multilinear singular value decomposition",
SIAM J. Matrix Anal. Appl. 21(4), 2000 (HOSVD) and "On the best rank-1 and
rank-(R1,...,RN) approximation of higher-order tensors" (HOOI), same volume.
Oseledets, "Tensor-train decomposition", SIAM J. Sci. Comput. 33(5), 2011.
Kim et al., "Compression of deep convolutional neural networks for fast and low
power mobile applications", ICLR 2016 (Tucker-2 of conv kernels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "ModeBases",
    "mode_bases",
    "tucker2",
    "tucker2_to_tensor",
    "kernel_to_tt_tensor",
    "tt_tensor_to_kernel",
    "tt_rank_bounds",
    "balanced_factors",
    "tt_svd",
    "tt_to_tensor",
    "svd",
    "project_tucker2",
    "project_tt",
    "project_svd",
]


def _leading_left_vectors(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """All left singular vectors of ``matrix`` (rows x cols), sorted by decreasing singular value.

    Uses the eigen-decomposition of the small Gram matrix ``A A^T`` (rows x rows):
    for conv kernels rows <= 512 while cols reach 4608, so this is far cheaper
    than a full SVD and gives an exactly orthogonal basis.
    """
    gram = matrix @ matrix.T
    eigvals, eigvecs = torch.linalg.eigh(gram)
    order = torch.argsort(eigvals, descending=True)
    return eigvecs[:, order], eigvals[order].clamp_min(0).sqrt()


@dataclass(frozen=True)
class ModeBases:
    """The per-mode singular bases of a 4-d kernel ``(C_out, C_in, kh, kw)``, computed once.

    ``u_out`` (C_out x C_out) and ``u_in`` (C_in x C_in) are orthogonal; the
    singular values ``s_out``/``s_in`` are in decreasing order.
    """

    weight: Tensor  # float64 copy of the kernel
    u_out: Tensor
    s_out: Tensor
    u_in: Tensor
    s_in: Tensor
    dtype: torch.dtype  # the kernel's own dtype, for the results
    calibrated: bool = False  # u_out is the data-aware output basis (:func:`mode_bases` with ``moment``)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def full_core(self) -> Tensor:
        """The kernel in the full mode bases; every HOSVD truncation's core is its leading block."""
        if "core" not in self._cache:
            self._cache["core"] = _core(self.weight, self.u_out, self.u_in)
        return self._cache["core"]

    def energy(self, mode: int, rank: int) -> float:
        """Fraction of the squared singular values of ``mode`` kept at ``rank``."""
        s = self.s_out if mode == 0 else self.s_in
        s2 = s.square()
        return float(s2[:rank].sum() / s2.sum().clamp_min(1e-300))


def mode_bases(weight: Tensor, moment: Tensor | None = None) -> ModeBases:
    """Compute the two mode SVD bases of a conv kernel once, for any number of truncations.

    With ``moment`` (the second moment ``sum p p^T`` of the layer's input patches on calibration data,
    ``(C_in*kh*kw)`` square, as :func:`stresnet.search.estimator.patch_moment` gives it), the output basis is
    the eigenbasis of the output's second moment ``W S W^T`` instead of ``W W^T``: keeping its leading ``r``
    vectors is then the rank-``r`` projection with the least output error on that data (output-response PCA,
    Zhang et al., "Accelerating very deep convolutional networks for classification and detection", TPAMI
    2016), where the weight-only basis spends rank on directions the inputs never excite. ``s_out`` is then the
    root of that output energy per direction. For a ``1x1`` kernel (a matrix) the input basis is then the QR
    basis of the kept rows ``U^T W`` in order, so that a Tucker-2 with ``r_in >= r_out`` keeps all of them:
    the same projection as the calibrated :func:`svd` (the weight's own input basis would cut it again, which
    measured 0 % zero-shot on EfficientNet-Lite0). Larger kernels keep the weight's own input basis.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-d conv kernel (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    c_out, c_in = w.shape[:2]
    flat = w.reshape(c_out, -1)
    if moment is None:
        u_out, s_out = _leading_left_vectors(flat)
    else:
        if tuple(moment.shape) != (flat.shape[1], flat.shape[1]):
            raise ValueError(f"input moment of shape {tuple(moment.shape)} does not fit a kernel of shape "
                             f"{tuple(weight.shape)} (expected {flat.shape[1]} square)")
        eigvals, eigvecs = torch.linalg.eigh(flat @ moment.to(flat) @ flat.T)
        order = torch.argsort(eigvals, descending=True)
        u_out, s_out = eigvecs[:, order], eigvals[order].clamp_min(0).sqrt()
    if moment is not None and flat.shape[1] == c_in:
        u_in, r = torch.linalg.qr(flat.T @ u_out, mode="complete")  # leading columns span the kept rows
        s_in = torch.zeros(c_in, dtype=w.dtype)
        s_in[: min(c_in, c_out)] = torch.diagonal(r).abs()
    else:
        u_in, s_in = _leading_left_vectors(w.transpose(0, 1).reshape(c_in, -1))
    return ModeBases(w, u_out, s_out, u_in, s_in, weight.dtype, calibrated=moment is not None)


def _core(w: Tensor, u_out: Tensor, u_in: Tensor) -> Tensor:
    """Project the kernel onto the two factor bases: ``W x_0 U_out^T x_1 U_in^T``."""
    return torch.einsum("oikl,or,is->rskl", w, u_out, u_in)


def tucker2(
    weight: Tensor | ModeBases,
    ranks: Sequence[int],
    n_iter: int = 0,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Tucker-2 decomposition of a conv kernel on its channel modes.

    Parameters
    ----------
    weight : Tensor or ModeBases
        Kernel ``(C_out, C_in, kh, kw)``, or its precomputed :func:`mode_bases`
        (pass the bases when deriving many ranks of one layer).
    ranks : (r_out, r_in)
        Ranks of the output-channel and input-channel modes.
    n_iter : int
        HOOI sweeps after the HOSVD initialisation (0 = plain truncated HOSVD).

    Returns
    -------
    core : Tensor ``(r_out, r_in, kh, kw)``
    factors : ``(U_out (C_out x r_out), U_in (C_in x r_in))`` with orthonormal columns,
        so that ``W ~= core x_0 U_out x_1 U_in``.
    """
    bases = weight if isinstance(weight, ModeBases) else mode_bases(weight)
    r_out, r_in = (int(r) for r in ranks)
    w = bases.weight
    c_out, c_in = w.shape[:2]
    if not (1 <= r_out <= c_out and 1 <= r_in <= c_in):
        raise ValueError(f"Tucker-2 ranks {[r_out, r_in]} out of range for a kernel with C_out={c_out}, C_in={c_in}")
    u_out, u_in = bases.u_out[:, :r_out], bases.u_in[:, :r_in]
    for _ in range(n_iter):
        # HOOI: each factor is the leading subspace of the kernel projected on the other one.
        y = torch.einsum("oikl,is->oskl", w, u_in).reshape(c_out, -1)
        u_out = _leading_left_vectors(y)[0][:, :r_out]
        y = torch.einsum("oikl,or->irkl", w, u_out).reshape(c_in, -1)
        u_in = _leading_left_vectors(y)[0][:, :r_in]
    # plain HOSVD: the truncated core is the leading block of the cached full core (one contraction per layer)
    core = _core(w, u_out, u_in) if n_iter else bases.full_core()[:r_out, :r_in]
    dtype = bases.dtype
    return core.to(dtype), (u_out.to(dtype), u_in.to(dtype))


def tucker2_to_tensor(core: Tensor, factors: tuple[Tensor, Tensor]) -> Tensor:
    """Rebuild the dense kernel from a Tucker-2 decomposition."""
    u_out, u_in = factors
    return torch.einsum("rskl,or,is->oikl", core, u_out, u_in)


def tt_rank_bounds(shape: Sequence[int]) -> list[int]:
    """Largest meaningful TT ranks: min of the left and right unfolding sizes."""
    bounds = []
    for k in range(1, len(shape)):
        left = 1
        for n in shape[:k]:
            left *= n
        right = 1
        for n in shape[k:]:
            right *= n
        bounds.append(min(left, right))
    return bounds


def kernel_to_tt_tensor(weight: Tensor, factors: Sequence[Sequence[int]] | None = None) -> Tensor:
    """View a kernel ``(C_out, C_in, kh, kw)`` in a TT layout.

    3-core layout (``factors=None``): ``(C_out, kh*kw, C_in)``. 5-core layout with
    ``factors=((o1, o2), (i1, i2))``, ``o1*o2 = C_out``, ``i1*i2 = C_in``:
    ``(o1, o2, kh*kw, i1, i2)`` (channel index = first * second_size + second).
    """
    c_out, c_in, kh, kw = weight.shape
    t = weight.reshape(c_out, c_in, kh * kw).transpose(1, 2)
    if factors is None:
        return t
    (o1, o2), (i1, i2) = factors
    if o1 * o2 != c_out or i1 * i2 != c_in:
        raise ValueError(f"TT factors {list(map(list, factors))} do not multiply to C_out={c_out}, C_in={c_in}")
    return t.reshape(o1, o2, kh * kw, i1, i2)


def tt_tensor_to_kernel(tensor: Tensor, kernel_shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`kernel_to_tt_tensor`."""
    c_out, c_in, kh, kw = kernel_shape
    return tensor.reshape(c_out, kh * kw, c_in).transpose(1, 2).reshape(c_out, c_in, kh, kw)


def balanced_factors(n: int) -> tuple[int, int]:
    """The divisor pair ``(a, b)``, ``a * b = n``, ``a <= b``, closest to ``sqrt(n)`` (5-core TT layout)."""
    a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return a, n // a


def tt_svd(tensor: Tensor, ranks: Sequence[int]) -> list[Tensor]:
    """Left-to-right TT-SVD of a d-way tensor into cores ``(r_{k-1}, n_k, r_k)``.

    ``ranks`` holds the d-1 inner ranks. A rank above what the unfolding can
    carry is kept and the extra slices are zero, so the layer shapes follow the
    plan exactly.
    """
    shape = tuple(tensor.shape)
    if len(ranks) != len(shape) - 1:
        raise ValueError(f"a {len(shape)}-way tensor needs {len(shape) - 1} TT ranks, got {list(ranks)}")
    if any(int(r) < 1 for r in ranks):
        raise ValueError(f"TT ranks must be >= 1, got {list(ranks)}")
    dtype = tensor.dtype
    rest = tensor.detach().to(torch.float64)
    cores: list[Tensor] = []
    r_prev = 1
    for k, n in enumerate(shape[:-1]):
        r = int(ranks[k])
        mat = rest.reshape(r_prev * n, -1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        keep = min(r, s.numel())
        core = torch.zeros(r_prev * n, r, dtype=torch.float64, device=rest.device)
        core[:, :keep] = u[:, :keep]
        cores.append(core.reshape(r_prev, n, r))
        nxt = torch.zeros(r, vh.shape[1], dtype=torch.float64, device=rest.device)
        nxt[:keep] = s[:keep, None] * vh[:keep]
        rest = nxt
        r_prev = r
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    return [c.to(dtype) for c in cores]


def tt_to_tensor(cores: Sequence[Tensor]) -> Tensor:
    """Contract TT cores back into the full tensor."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=([out.ndim - 1], [0]))
    return out.squeeze(0).squeeze(-1)


def svd(matrix: Tensor | ModeBases, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``M ~= A @ B`` with ``A = U_r S_r`` (m x r) and ``B = V_r^T`` (r x n).

    ``matrix`` may be the :func:`mode_bases` of the matrix as a kernel. Calibrated ones give ``A = U_r`` (their
    leading output vectors) and ``B = U_r^T M``: the rank-``r`` projection of ``M`` with the least output error
    on the calibration data."""
    bases = matrix if isinstance(matrix, ModeBases) else None
    m = bases.weight.reshape(bases.weight.shape[0], -1) if bases else matrix.detach().to(torch.float64)
    dtype, rank = (bases.dtype if bases else matrix.dtype), int(rank)
    if not 1 <= rank <= min(m.shape):
        raise ValueError(f"SVD rank {rank} out of range for a {tuple(m.shape)} matrix")
    if bases and bases.calibrated:
        a = bases.u_out[:, :rank]
        return a.to(dtype), (a.T @ m).to(dtype)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    a = u[:, :rank] * s[:rank]
    return a.to(dtype), vh[:rank].to(dtype)


# Projections onto the rank sets (used by ADMM): decompose and rebuild dense.


def project_tucker2(weight: Tensor, ranks: Sequence[int], n_iter: int = 0) -> Tensor:
    """Closest (HOSVD/HOOI) Tucker-2 rank-``ranks`` kernel to ``weight``."""
    return tucker2_to_tensor(*tucker2(weight, ranks, n_iter))


def project_tt(weight: Tensor, ranks: Sequence[int], factors: Sequence[Sequence[int]] | None = None) -> Tensor:
    """TT-SVD projection of a kernel in the 3-core (or, with ``factors``, 5-core) layout."""
    cores = tt_svd(kernel_to_tt_tensor(weight, factors), ranks)
    return tt_tensor_to_kernel(tt_to_tensor(cores), weight.shape)


def project_svd(weight: Tensor, rank: int) -> Tensor:
    """Rank-``rank`` projection of a kernel flattened to ``(C_out, -1)``."""
    a, b = svd(weight.reshape(weight.shape[0], -1), rank)
    return (a @ b).reshape(weight.shape)
