"""Provenance: what a result was made with, so that two runs that differ can be told apart.

Every results JSON and every ``stage.json`` a recipe writes carries :func:`provenance`:
the git commit (and whether the tree had uncommitted changes) of the folder the run
started in, the versions of the packages that shape the numbers, the base
checkpoint's sha256, a fingerprint of each data folder (file count and the sha256 of
the sorted relative file names: cheap on ImageNet, and it changes when a file is
added, removed or renamed), the CPU / GPU and torch threads, the start time and the
seconds taken. What cannot change during a process (versions, git, hardware) is
collected once per process (and current folder); hashes are keyed by the file's size and mtime.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

__all__ = ["PACKAGES", "provenance", "static_provenance", "git_state", "package_versions", "hardware",
           "file_sha256", "data_fingerprint", "utc_now"]

PACKAGES = ("torch", "timm", "stresnet", "onnxruntime", "ultralytics")


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def git_state(cwd: str | Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git work tree holding ``cwd`` (default: the current folder), or None.

    ``dirty`` counts changes to tracked files only: the run's own new outputs do not make it dirty."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Python's version and each package's installed version (None when absent); nothing is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows: timings and results name their CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def hardware() -> dict[str, Any]:
    """CPU model, GPU name (None without CUDA), torch threads and CPU count."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "gpu": gpu, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def static_provenance() -> dict[str, Any]:
    """The git state of the current folder and the package versions, collected once per process (and folder)."""
    return _static(str(Path.cwd()))


@functools.lru_cache(maxsize=8)
def _static(cwd: str) -> dict[str, Any]:
    return {"git": git_state(cwd), "versions": package_versions()}


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per size and mtime, so a 100 MB checkpoint is read once)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def data_fingerprint(folder: str | Path) -> dict[str, Any]:
    """``{"path", "files", "names_sha256"}``: the number of files under ``folder`` and the sha256 of their
    sorted relative names (one per line); ``files`` is None when the folder does not exist.

    Names, not contents: reading ImageNet's bytes would take longer than many runs, and a changed split
    (files added, removed, moved between classes) changes the names."""
    root = Path(folder)
    if not root.is_dir():
        return {"path": str(folder), "files": None, "names_sha256": None}
    names = sorted(str(Path(dirpath, f).relative_to(root)).replace(os.sep, "/")
                   for dirpath, _, files in os.walk(root, followlinks=True) for f in files)
    digest = hashlib.sha256("".join(n + "\n" for n in names).encode()).hexdigest()
    return {"path": str(folder), "files": len(names), "names_sha256": digest}


def provenance(started: str, seconds: float, checkpoint: str | Path | None = None,
               data: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The provenance record: :func:`static_provenance`, the hardware, the base ``checkpoint``'s sha256 (None
    without a checkpoint file), the ``data`` fingerprints (from :func:`data_fingerprint`), ``started`` (UTC
    ISO, from :func:`utc_now`) and ``seconds``."""
    ckpt = Path(checkpoint) if checkpoint else None
    return {**static_provenance(), "hardware": hardware(),
            "base_checkpoint": None if ckpt is None else
            {"path": str(ckpt), "sha256": file_sha256(ckpt) if ckpt.is_file() else None},
            "data": list(data), "started": started, "seconds": round(seconds, 3)}
