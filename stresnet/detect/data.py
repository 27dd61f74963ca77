"""COCO-layout data -> a YOLO dataset in a run folder, converted by ultralytics' own ``convert_coco``.

The source stays untouched (it may be read-only): labels are written under
``out/``, and ``out/images/<split>`` is a symlink to the source images, so
ultralytics finds each image's label by its usual ``/images/`` -> ``/labels/`` rule.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from . import DetectError
from .offline import require_ultralytics

SPLITS = ("train2017", "val2017")


def check_coco_root(root: Path, splits: Sequence[str] = SPLITS) -> None:
    """Fail with one line naming the first missing piece of a COCO layout."""
    root = Path(root)
    if not root.is_dir():
        raise DetectError(f"data {root}: no such folder (expected a COCO layout: images/<split>, annotations/instances_<split>.json)")
    for split in splits:
        for need in (root / "images" / split, root / "annotations" / f"instances_{split}.json"):
            if not need.exists():
                raise DetectError(f"data {root}: missing {need.relative_to(root)}")


def coco_names() -> dict[int, str]:
    """The 80 COCO class names, from ultralytics' own ``coco.yaml``."""
    from ultralytics.cfg import get_cfg  # noqa: F401  (ensures the package data is importable)
    from ultralytics.utils import ROOT, YAML

    return dict(YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"])


def prepare_coco(root: str | Path, out: str | Path, splits: Sequence[str] = SPLITS,
                 limit: int | None = None) -> Path:
    """Convert ``root``'s COCO annotations to YOLO labels under ``out`` and write ``out/data.yaml``.

    ``limit`` keeps the first ``limit`` images (sorted by name) of each split, for
    quick tests. Conversion is skipped when ``out`` already holds it (resume).
    """
    require_ultralytics()
    from ultralytics.data.converter import convert_coco
    from ultralytics.utils import YAML

    root, out = Path(root).resolve(), Path(out).resolve()
    check_coco_root(root, splits)
    out.mkdir(parents=True, exist_ok=True)
    if not all((out / "labels" / s).is_dir() for s in splits):
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            ann = Path(tmp) / "annotations"
            ann.mkdir()
            for split in splits:  # only the instances files: convert_coco reads every *.json it finds
                (ann / f"instances_{split}.json").symlink_to(root / "annotations" / f"instances_{split}.json")
            convert_coco(labels_dir=str(ann), save_dir=str(Path(tmp) / "converted"), use_segments=False,
                         cls91to80=True)
            labels = Path(tmp) / "converted" / "labels"
            (out / "labels").mkdir(exist_ok=True)
            for split in splits:
                src = labels / split
                if not src.is_dir():  # a split without any annotation still gets its (empty) folder
                    src.mkdir(parents=True)
                os.replace(src, out / "labels" / split)
    entries = {}
    for split in splits:
        link = out / "images" / split
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(root / "images" / split, target_is_directory=True)
        files = sorted(p.name for p in (root / "images" / split).iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if limit is not None:
            files = files[:limit]
        if not files:
            raise DetectError(f"data {root}: images/{split} holds no .jpg/.png image")
        (out / f"{split}.txt").write_text("".join(f"./images/{split}/{f}\n" for f in files))
        entries[split] = f"{split}.txt"
    data = {"path": str(out), "train": entries[splits[0]], "val": entries[splits[-1]], "names": coco_names()}
    yaml_path = out / "data.yaml"
    YAML.save(yaml_path, data)
    return yaml_path


def image_list(data_yaml: str | Path, split: str = "val") -> list[Path]:
    """The image paths of one split of a dataset YAML written by :func:`prepare_coco`."""
    from ultralytics.utils import YAML

    data = YAML.load(data_yaml)
    listing = Path(data["path"]) / data[split]
    return [Path(data["path"]) / line.strip() for line in listing.read_text().splitlines() if line.strip()]
