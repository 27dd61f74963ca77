"""Publishing zoo weights: a Hub-ready folder, the offline Hugging Face cache, and the sha256 registry.

A published folder holds ``config.json`` (timm's Hub format: architecture,
pretrained_cfg, and ``model_args`` carrying the plan, so ``hf-hub:`` and
``local-dir:`` names rebuild the architecture), ``model.safetensors`` (never
pickle) and ``README.md`` (the model card). :func:`install_to_cache` lays the
folder out as ``huggingface_hub``'s cache does, so ``timm.create_model(name,
pretrained=True)`` works with ``HF_HUB_OFFLINE=1`` on a machine that has no
network; :func:`push` uploads the same folder when there is one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from safetensors.torch import save
from torch import nn

from ..plan import Plan, PlanError, plan_of
from ..utils.io import atomic_write, atomic_write_bytes
from .models import WEIGHTS_FILENAME, default_cfgs, hub_id, packaged_plan, sha256_of


def save_weights(model: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> str:
    """Write the state dict as safetensors (atomically) and return its sha256.

    The metadata goes in as one entry (``stresnet``: sorted JSON): safetensors writes its metadata map in an order
    that changes from run to run, and the same weights must always have the same published sha256."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"stresnet": json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    atomic_write_bytes(path, save(state, metadata=meta))
    return sha256_of(path)


def publish(
    model: nn.Module,
    name: str,
    out_dir: Path,
    metrics: Mapping[str, Any],
    recipe: str,
    card: str | None = None,
    plan: Plan | None = None,
) -> dict:
    """Write ``out_dir/{config.json, model.safetensors, README.md}`` for ``arch.tag`` and return its record.

    ``metrics`` are measured numbers (top-1, params, ...) stored beside the sha256,
    the torchvision way: weights that know how they were made.
    """
    arch, _, tag = name.partition(".")
    cfg = default_cfgs[arch].cfgs[tag].to_dict()
    plan = plan or plan_of(model)
    plan_dict = {**plan.to_dict(), "base": {"arch": packaged_plan(arch).base["arch"]}}  # no local checkpoint path
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, out_dir / WEIGHTS_FILENAME, {"name": name, "recipe": recipe,
                                                          **{k: str(v) for k, v in metrics.items()}})
    num_classes = cfg["num_classes"]
    config = {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": int(getattr(model, "num_features", 0)),
        "pretrained_cfg": {**{k: v for k, v in cfg.items() if k not in ("hf_hub_id", "source", "architecture")},
                           "tag": tag},
        "model_args": {"plan": plan_dict},
    }
    atomic_write_bytes(out_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    if card is not None:
        atomic_write_bytes(out_dir / "README.md", card.encode())
    record = {"sha256": sha, "hf_hub_id": hub_id(name), "recipe": recipe, "metrics": dict(metrics),
              "file_size": (out_dir / WEIGHTS_FILENAME).stat().st_size}
    return record


def register(name: str, record: Mapping[str, Any], registry: Path) -> None:
    """Record a published file's sha256 and metrics in the ``weights.json`` at ``registry`` (sorted, stable).

    timm lists a tag as pretrained from the registry read at import; a tag registered
    later in this process still loads (``pretrained=True`` consults the live registry).
    """
    data = json.loads(registry.read_text()) if registry.is_file() else {}
    data[name] = dict(record)
    atomic_write_bytes(registry, (json.dumps(dict(sorted(data.items())), indent=2) + "\n").encode())
    from .models import weights_registry

    weights_registry.cache_clear()


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps its cache (honours HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def install_to_cache(folder: Path, repo_id: str, cache_dir: Path | None = None) -> Path:
    """Copy a published folder into the local Hub cache as revision ``main`` of ``repo_id``.

    Mirrors huggingface_hub's layout (``models--org--name/{blobs,snapshots/<rev>,refs/main}``),
    so offline downloads resolve to these files.
    """
    cache_dir = Path(cache_dir) if cache_dir else hf_cache_dir()
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    digests = {p: sha256_of(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}  # hash each file once
    revision = hashlib.sha1("".join(digests.values()).encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f, digest in digests.items():
        blob = repo / "blobs" / digest
        if not blob.exists():
            with open(f, "rb") as src:
                atomic_write(blob, lambda dst: shutil.copyfileobj(src, dst))
        link = snapshot / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    atomic_write_bytes(repo / "refs" / "main", revision.encode())
    return snapshot


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload a published folder to the Hugging Face Hub (needs network and a token)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder)))


def publish_run(model: nn.Module, name: str, out_root: Path, metrics: Mapping[str, Any], recipe: str,
                registry: Path | None = None, install_cache: bool = True, cache_dir: Path | None = None) -> dict:
    """Publish a recipe's final model as ``arch.tag``: folder + card, sha256 ``registry`` (None: not
    recorded), local Hub cache.

    ``metrics`` is the recipe's final eval row (measured top-1, params, ...); the
    card quotes exactly these numbers and ``recipe`` (the command that made them).
    """
    from ..cost import profile
    from .cards import model_card
    from .models import default_cfgs

    arch, _, tag = name.partition(".")
    if arch not in default_cfgs or tag not in default_cfgs[arch].cfgs:
        raise PlanError(f"publish: {name!r} is not a registered zoo name (arch.tag, e.g. stresnet18_8x.imagenette)")
    cfg = default_cfgs[arch].cfgs[tag]
    keep = ("top1", "top5", "params", "macs", "flash_bytes", "peak_ram_bytes", "images", "compression",
            "top1_drop_points")
    metrics = {k: metrics[k] for k in keep if k in metrics}
    folder = Path(out_root) / name
    record = publish(model, name, folder, metrics, recipe)
    prof = {**profile(model, cfg.input_size).to_dict(), "input_size": list(cfg.input_size)}
    atomic_write_bytes(folder / "README.md", model_card(name, prof, record).encode())
    if registry is not None:
        register(name, record, registry)
    result = {"name": name, "folder": str(folder), **record}
    if install_cache:
        result["cache_snapshot"] = str(install_to_cache(folder, record["hf_hub_id"], cache_dir))
    return result
