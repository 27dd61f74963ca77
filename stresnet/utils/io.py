"""Atomic file writes: a reader (or a resumed run) never sees a half-written results JSON, plan or registry."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], fsync: bool = False) -> Path:
    """Write via ``write(file)`` to ``<path>.tmp`` beside ``path``, then rename it over ``path``.

    The rename is atomic on one file system, so ``path`` holds either the old or the new content.
    ``fsync`` also flushes the file and the rename to disk (training checkpoints that must survive a
    power cut); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """``json.dumps(data, indent=indent)`` and a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")
