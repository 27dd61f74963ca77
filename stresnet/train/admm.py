"""ADMM rank-constrained training of a dense model, so that decomposing it afterwards loses little.

Yin, Sui, Liao, Yuan, "Towards Efficient Tensor Decomposition-Based DNN Model
Compression with Optimization Framework", CVPR 2021 (arXiv 2107.12422); see
``specs/papers.md`` section 3.

Method
    ``min loss(W)  s.t.  W_i in R_i`` (``R_i``: the kernels of layer ``i`` that
    its plan spec can represent exactly: Tucker-2 ranks, TT ranks, matrix
    rank) is split as ``loss(W) + sum_i g_i(Z_i)``, ``W_i = Z_i``, with ``g_i``
    the indicator of ``R_i``, and solved by scaled ADMM:

    * start (fresh run): ``Z = Proj(W)``, ``U = 0``;
    * W-step: SGD on ``loss(W) + (rho/2) sum_i ||W_i - Z_i + U_i||_F^2``
      with ``Z``, ``U`` fixed (:class:`AdmmHook` adds the penalty through
      :meth:`~stresnet.train.engine.TrainHook.extra_loss`; KD from the
      teacher, when given, is the engine's loss);
    * Z/U-step: ``Z <- Proj(W + U)``; ``U <- U + (W - Z)``.

    ``Proj`` is :func:`stresnet.decompose.project_tucker2` (HOSVD, or HOOI with
    ``n_iter`` sweeps), :func:`~stresnet.decompose.project_tt` (3-core or
    5-core TT-SVD) or :func:`~stresnet.decompose.project_svd` (conv flattened
    to ``(C_out, -1)``, or a linear layer's matrix). ``rho`` is constant.
    Afterwards the caller decomposes (``stresnet.plan.compress(model, plan,
    init="decompose")``) and fine-tunes briefly.

Schedule and deviations from the paper
    The paper does one Z/U-step at the start of every epoch.
    ``updates_per_epoch = k > 1`` (our deviation, for short CPU/GPU budgets
    where a run is one or two epochs) does ``k`` evenly spaced steps per
    epoch: before the epoch's updates number ``floor(j * S / k)``,
    ``j = 0..k-1`` (``S`` updates per epoch; duplicates collapse, so at most
    one Z/U-step per SGD update). ``k = 1`` is the paper's schedule.

    No Z/U-step is done right after the initialisation ``Z = Proj(W)``,
    ``U = 0`` (at the start of a fresh run's first epoch): it would give
    ``Z = Proj(W)`` again and ``U = W - Proj(W)``, i.e. double the initial
    pull before any W-step, while the standard ADMM order is W-step, then
    Z/U-step. So the Z/U-steps fall at global updates ``g > 0`` with
    ``g mod S`` in the schedule above; a step at an epoch boundary runs in
    ``on_epoch_start`` of the next epoch (none after the last update: the
    model is decomposed next). ``Z``, ``U`` and the diagnostics are saved in
    the engine's checkpoint at each epoch end, before the next boundary
    step, so a resumed run does the same Z/U-steps at the same updates as an
    uninterrupted one (bitwise on CPU).

    Under DDP every rank computes the projections and rank 0's ``Z`` and
    ``U`` are broadcast, so all ranks add the same penalty.

Diagnostics
    :attr:`AdmmHook.history` holds one row per Z/U-step (and one for the
    initialisation): ``epoch``, ``step`` (global update count before which it
    ran), ``distance`` (mean over layers of ``||W - Proj(W)|| / ||W||``: how
    far the model is from its decomposition) and ``residual`` (mean
    ``||W - Z|| / ||W||``, the primal residual).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import decompose as dec
from ..plan import Plan, PlanError, _check_spec_on_module, validate
from .engine import TrainConfig, TrainHook, finetune

__all__ = ["AdmmConfig", "AdmmHook", "project_weight", "projected_copy", "relative_distance", "admm_train"]

log = logging.getLogger("stresnet.train.admm")

ADMM_TYPES = ("tucker2", "tt", "svd")
STATE_FORMAT = "stresnet-admm/1"


@dataclass
class AdmmConfig:
    """ADMM hyper-parameters (see the module docstring)."""

    rho: float = 1e-3  # constant penalty weight, as in the paper
    updates_per_epoch: int = 1  # Z/U-steps per epoch; 1 = the paper, > 1 = our short-budget deviation
    n_iter: int = 0  # HOOI sweeps of the Tucker-2 projection (0 = truncated HOSVD)

    def __post_init__(self) -> None:
        if not (isinstance(self.rho, (int, float)) and not isinstance(self.rho, bool)
                and math.isfinite(self.rho) and self.rho > 0):
            raise ValueError(f"AdmmConfig.rho must be a finite number > 0, got {self.rho!r}")
        if isinstance(self.updates_per_epoch, bool) or int(self.updates_per_epoch) != self.updates_per_epoch \
                or self.updates_per_epoch < 1:
            raise ValueError(f"AdmmConfig.updates_per_epoch must be an integer >= 1, got {self.updates_per_epoch!r}")
        if isinstance(self.n_iter, bool) or int(self.n_iter) != self.n_iter or self.n_iter < 0:
            raise ValueError(f"AdmmConfig.n_iter must be an integer >= 0, got {self.n_iter!r}")
        self.rho = float(self.rho)
        self.updates_per_epoch = int(self.updates_per_epoch)
        self.n_iter = int(self.n_iter)


# ----------------------------------------------------------------------------- projections

def _check_admm_spec(name: str, module: nn.Module | None, spec: Mapping[str, Any]) -> None:
    """PlanError (naming the layer) unless ADMM can project this layer onto its spec's rank set."""
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind not in ADMM_TYPES:
        raise PlanError(f"layer {name!r}: ADMM supports {', '.join(ADMM_TYPES)} specs, not {kind!r}")
    _check_spec_on_module(name, module, spec)  # module type, groups, rank limits, TT factors


def project_weight(module: nn.Module, spec: Mapping[str, Any], *, name: str = "<layer>", n_iter: int = 0,
                   weight: Tensor | None = None) -> Tensor:
    """The projection of ``module``'s weight (or of ``weight``, same shape) onto the rank set of ``spec``.

    Returns a detached tensor with the weight's dtype and device. ``name``
    labels the :class:`PlanError` raised for a spec ADMM cannot handle
    (``lrs``, ``sparse``, ``full``) or a module it does not fit. A
    ``tucker2`` spec's own ``n_iter`` wins over the argument (as in
    :func:`stresnet.plan.compress`).
    """
    _check_admm_spec(name, module, spec)
    w = (module.weight if weight is None else weight).detach()
    if w.shape != module.weight.shape:
        raise ValueError(f"layer {name!r}: weight of shape {tuple(w.shape)} for a module of {tuple(module.weight.shape)}")
    kind = spec["type"]
    if kind == "tucker2":
        return dec.project_tucker2(w, spec["ranks"], n_iter=int(spec.get("n_iter", n_iter)))
    if kind == "svd":
        return dec.project_svd(w, spec["rank"])
    # tt_svd builds its cores on the CPU, so it runs there
    return dec.project_tt(w.cpu(), spec["ranks"], spec.get("factors")).to(w.device)


def _planned(model: nn.Module, plan: Plan) -> list[tuple[str, nn.Module, dict]]:
    """``(name, module, spec)`` of every layer the plan factorises, checked for ADMM."""
    out = []
    for name, spec in plan.factorised().items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        _check_admm_spec(name, module, spec)
        out.append((name, module, spec))
    return out


def _rel(diff: Tensor, ref: Tensor) -> float:
    return float(torch.linalg.vector_norm(diff.double()) / torch.linalg.vector_norm(ref.double()).clamp_min(1e-300))


@torch.no_grad()
def relative_distance(model: nn.Module, plan: Plan, n_iter: int = 0) -> float:
    """Mean over the planned layers of ``||W - Proj(W)||_F / ||W||_F`` (0: decomposing loses nothing)."""
    layers = _planned(model, plan)
    if not layers:
        return 0.0
    d = [_rel(m.weight - project_weight(m, s, name=n, n_iter=n_iter), m.weight) for n, m, s in layers]
    return sum(d) / len(d)


@torch.no_grad()
def projected_copy(model: nn.Module, plan: Plan, n_iter: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose planned layers' weights are replaced by their projections.

    Same architecture, so it runs anywhere ``model`` runs: what the
    decomposed model would compute, without building factorised layers.
    """
    layers = _planned(model, plan)
    out = copy.deepcopy(model)
    for name, module, spec in layers:
        out.get_submodule(name).weight.copy_(project_weight(module, spec, name=name, n_iter=n_iter))
    return out


# ----------------------------------------------------------------------------- hook

class AdmmHook(TrainHook):
    """Scaled ADMM on the planned layers of the model being trained (see the module docstring).

    Use with :func:`stresnet.train.engine.finetune` (``hooks=[hook]``) on the
    dense model, or through :func:`admm_train`.
    """

    def __init__(self, plan: Plan, cfg: AdmmConfig | None = None) -> None:
        self.plan = plan
        self.cfg = cfg if cfg is not None else AdmmConfig()
        for name, spec in plan.factorised().items():  # fail before training, not at its first step
            kind = spec.get("type")
            if kind not in ADMM_TYPES:
                raise PlanError(f"layer {name!r}: ADMM supports {', '.join(ADMM_TYPES)} specs, not {kind!r}")
        self.z: dict[str, Tensor] = {}
        self.u: dict[str, Tensor] = {}
        self._target: dict[str, Tensor] = {}  # Z - U: the penalty is ||W - (Z - U)||^2
        self.history: list[dict] = []
        self.steps_per_epoch = 1
        self._initialised = False

    # schedule
    def offsets(self) -> list[int]:
        """Updates into an epoch before which a Z/U-step runs: ``floor(j * S / k)``, ``j = 0..k-1``."""
        s, k = self.steps_per_epoch, self.cfg.updates_per_epoch
        return sorted({(j * s) // k for j in range(k)})

    def is_update_step(self, step: int) -> bool:
        """Whether a Z/U-step runs before global update ``step + 1`` (never at ``step == 0``)."""
        return step > 0 and step % self.steps_per_epoch in self.offsets()

    # ADMM
    def _layers(self, model: nn.Module) -> list[tuple[str, nn.Module, dict]]:
        return _planned(model, self.plan)

    def _project(self, name: str, module: nn.Module, spec: dict, weight: Tensor | None = None) -> Tensor:
        return project_weight(module, spec, name=name, n_iter=self.cfg.n_iter, weight=weight)

    def _broadcast(self) -> None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            for name in self.z:
                dist.broadcast(self.z[name], 0)
                dist.broadcast(self.u[name], 0)

    def _retarget(self) -> None:
        self._target = {name: self.z[name] - self.u[name] for name in self.z}

    @torch.no_grad()
    def _initialise(self, model: nn.Module, epoch: int) -> None:
        self.z, self.u, dist_rows = {}, {}, []
        for name, module, spec in self._layers(model):
            w = module.weight.detach()
            self.z[name] = self._project(name, module, spec)
            self.u[name] = torch.zeros(w.shape, dtype=w.dtype, device=w.device)  # contiguous even if w is not
            dist_rows.append(_rel(w - self.z[name], w))
        self._broadcast()
        self._retarget()
        d = sum(dist_rows) / max(len(dist_rows), 1)
        self.history = [{"epoch": epoch, "step": epoch * self.steps_per_epoch, "distance": d, "residual": d}]
        self._initialised = True

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int, step: int) -> None:
        """One Z/U-step: ``Z <- Proj(W + U)``; ``U <- U + (W - Z)``; log the distances."""
        distance, residual = [], []
        for name, module, spec in self._layers(model):
            w = module.weight.detach()
            u = self.u[name].to(device=w.device, dtype=w.dtype)
            z = self._project(name, module, spec, weight=w + u)
            self.z[name], self.u[name] = z.contiguous(), (u + (w - z)).contiguous()  # for dist.broadcast
            distance.append(_rel(w - self._project(name, module, spec), w))
            residual.append(_rel(w - z, w))
        self._broadcast()
        self._retarget()
        n = max(len(distance), 1)
        self.history.append({"epoch": epoch, "step": step, "distance": sum(distance) / n, "residual": sum(residual) / n})

    # TrainHook
    def on_train_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        if self._initialised:  # resumed: bring the checkpointed Z, U to the weights' device
            layers = {name: module for name, module, _ in self._layers(model)}
            if set(layers) != set(self.z):
                raise PlanError(f"ADMM state has layers {sorted(self.z)}, the plan {sorted(layers)}")
            for name, module in layers.items():
                w = module.weight
                self.z[name] = self.z[name].to(device=w.device, dtype=w.dtype)
                self.u[name] = self.u[name].to(device=w.device, dtype=w.dtype)
            self._retarget()

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if not self._initialised:  # fresh run (or a checkpoint without ADMM state): Z = Proj(W), U = 0, no step
            self._initialise(model, epoch)
            return
        step = epoch * self.steps_per_epoch
        if self.is_update_step(step):
            self.update(model, epoch, step)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if step % self.steps_per_epoch and self.is_update_step(step):  # boundaries: in the next on_epoch_start
            self.update(model, step // self.steps_per_epoch, step)

    def extra_loss(self, model: nn.Module) -> Tensor | None:
        """``(rho / 2) * sum_i ||W_i - Z_i + U_i||_F^2`` (gradient to ``W`` only)."""
        if not self._target:
            return None
        terms = []
        for name, target in self._target.items():
            w = model.get_submodule(name).weight
            terms.append((w - target.to(device=w.device, dtype=w.dtype)).pow(2).sum())
        return 0.5 * self.cfg.rho * torch.stack(terms).sum()

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "initialised": self._initialised, "rho": self.cfg.rho,
                "updates_per_epoch": self.cfg.updates_per_epoch, "n_iter": self.cfg.n_iter,
                "z": {k: v.detach().cpu().clone() for k, v in self.z.items()},
                "u": {k: v.detach().cpu().clone() for k, v in self.u.items()},
                "history": [dict(row) for row in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if not state or not state.get("initialised"):
            return
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"ADMM hook state: unknown format {state.get('format')!r} (expected {STATE_FORMAT!r})")
        changed = [k for k in ("rho", "updates_per_epoch", "n_iter") if state.get(k) != getattr(self.cfg, k)]
        if changed:
            log.warning("resuming ADMM with a different %s: the run will not match an uninterrupted one",
                        ", ".join(changed))
        self.z = dict(state["z"])
        self.u = dict(state["u"])
        self.history = [dict(row) for row in state["history"]]
        self._initialised = True
        self._retarget()


# ----------------------------------------------------------------------------- driver

def admm_train(dense: nn.Module, teacher: nn.Module | None, plan: Plan, train_dir: str | Path, val_dir: str | Path,
               out_dir: str | Path, train_cfg: TrainConfig, admm_cfg: AdmmConfig | None = None, resume: bool = False,
               progress: bool = True, stop_after_epoch: int | None = None) -> dict:
    """ADMM-train ``dense`` (in place) towards ``plan``'s rank sets; returns the finetune summary plus ``"admm"``.

    The loss is the engine's (KD from ``teacher`` when given) plus the ADMM
    penalty. The plan's layers are matched against ``dense`` as given (its
    ``surgery`` is not applied here). ``"admm"`` holds ``rho``,
    ``updates_per_epoch``, ``distance_before`` / ``distance_after``
    (:func:`relative_distance` of the model passed in and of the trained
    one) and the hook's ``history``. Decompose afterwards with
    ``stresnet.plan.compress(dense, plan, init="decompose")``.
    """
    admm_cfg = admm_cfg if admm_cfg is not None else AdmmConfig()
    validate(dense, plan)
    hook = AdmmHook(plan, admm_cfg)
    _planned(dense, plan)
    before = relative_distance(dense, plan, n_iter=admm_cfg.n_iter)
    summary = finetune(dense, teacher, train_dir, val_dir, out_dir, train_cfg, resume=resume, progress=progress,
                       stop_after_epoch=stop_after_epoch, hooks=[hook])
    summary["admm"] = {"rho": admm_cfg.rho, "updates_per_epoch": admm_cfg.updates_per_epoch,
                       "n_iter": admm_cfg.n_iter, "distance_before": before,
                       "distance_after": relative_distance(dense, plan, n_iter=admm_cfg.n_iter),
                       "history": [dict(row) for row in hook.history]}
    return summary
