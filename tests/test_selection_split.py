"""The selection split: one deterministic function, disjoint from calibration images and from ILSVRC val files."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from stresnet.data import calibration_images, selection_images, split_indices


def _samples(per_class: int = 30, ilsvrc: int = 4, classes: int = 3) -> list[tuple[str, int]]:
    out = []
    for c in range(classes):
        out += [(f"/d/train/c{c}/n{c:02d}_{i}.JPEG", c) for i in range(per_class)]
        out += [(f"/d/train/c{c}/ILSVRC2012_val_{c:03d}{i:05d}.JPEG", c) for i in range(ilsvrc)]
    return out


def test_split_is_a_partition_with_the_stated_size_and_no_ilsvrc_val_file():
    samples = _samples()
    split = split_indices(samples, per_class=10)
    parts = [set(split[k]) for k in ("fit", "selection", "excluded")]
    assert sum(map(len, parts)) == len(samples) and set().union(*parts) == set(range(len(samples)))
    assert len(split["selection"]) == 30
    assert all(sum(samples[i][1] == c for i in split["selection"]) == 10 for c in range(3))
    named = {i for i, (p, _) in enumerate(samples) if "ILSVRC2012_val_" in p}
    assert set(split["excluded"]) == named and not named & (parts[0] | parts[1])


def test_split_does_not_depend_on_listing_order():
    samples = _samples()
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    pick = lambda s: {s[i][0] for i in split_indices(s, per_class=7)["selection"]}  # noqa: E731
    assert pick(samples) == pick(shuffled)


def test_split_takes_at_most_half_of_a_small_class():
    split = split_indices(_samples(per_class=6), per_class=100)
    assert len(split["selection"]) == 3 * 3 and len(split["fit"]) == 3 * 3


def test_split_rejects_a_negative_size():
    with pytest.raises(ValueError, match="per_class"):
        split_indices(_samples(), per_class=-1)


def _write_folder(root: Path, per_class: int, ilsvrc: int) -> None:
    """Constant-colour 8x8 images, a different colour each, so a transformed image tells which file it was."""
    from PIL import Image

    k = 0
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        names = [f"img_{i}.png" for i in range(per_class)] + [f"ILSVRC2012_val_{c}{i:07d}.png" for i in range(ilsvrc)]
        for name in names:
            k += 1
            Image.new("RGB", (8, 8), (k, 255 - k, (7 * k) % 256)).save(root / f"c{c}" / name)


def _colours(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(np.round(img[:, 0, 0].numpy(), 4)) for img in x}


def test_calibration_never_draws_the_selection_split_or_ilsvrc_val_files(tmp_path: Path):
    from torchvision import datasets

    from stresnet.data import eval_transform

    _write_folder(tmp_path, per_class=12, ilsvrc=3)
    sel, _ = selection_images(tmp_path, 8, per_class=4)
    assert len(sel) == 8
    ds = datasets.ImageFolder(str(tmp_path), eval_transform(8))
    ilsvrc = _colours(torch.stack([ds[i][0] for i, (p, _) in enumerate(ds.samples) if "ILSVRC2012_val_" in p]))
    fit = 2 * 12 - 8
    for seed in range(3):
        calib, _ = calibration_images(tmp_path, 100, 8, seed=seed, per_class=4)  # asks for more than the fit part holds
        assert len(calib) == fit
        assert not _colours(calib) & (_colours(sel) | ilsvrc)
