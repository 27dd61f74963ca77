"""Fidelity to the base on unlabelled images of other content: what a model distilled on few classes kept."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from stresnet.imagenet.evaluate import agreement, image_files

CONFIG = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 1.0, "crop_mode": "center"}


def _images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")  # searched recursively
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(sub / f"{i}.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_agreement_is_one_for_the_base_itself_and_falls_with_a_changed_head(tmp_path: Path) -> None:
    _images(tmp_path, 12)
    files = image_files(tmp_path)
    assert len(files) == 12 and files == sorted(files)
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 50))
    same = agreement(copy.deepcopy(base), base, files, CONFIG, batch_size=5)
    assert same["images"] == 12 and same["top1_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-6)
    other = copy.deepcopy(base)
    with torch.no_grad():
        other[-1].weight.copy_(torch.randn_like(other[-1].weight) * 5)
    moved = agreement(other, base, files, CONFIG, batch_size=5)
    assert moved["top1_agreement"] < 1.0 and moved["kl"] > 0.01


def test_a_folder_without_images_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        image_files(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_files(tmp_path)
