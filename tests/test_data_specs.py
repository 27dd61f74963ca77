"""Recipe data values: folders (unchanged), timm dataset specs, torchvision's Imagenette layout (offline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from stresnet import data as sdata
from stresnet.data import DataError, DataSplit, create_dataset, data_split, selection_images

WNIDS = ("n01440764", "n02102040")  # two of Imagenette's classes (torchvision maps wnids to names)


def _images(folder: Path, classes, n: int, ext: str = ".JPEG") -> None:
    for c, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (12, 10), (40 * c, 7 * i, 100)).save(folder / cls / f"{cls}_{i:03d}{ext}", "JPEG")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for split, n in (("train", 6), ("val", 3)):
        _images(root / split, ("b_cls", "a_cls"), n)
    return root


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory) -> Path:
    """torchvision's Imagenette layout, as ``Imagenette(root, size="160px", download=True)`` leaves it."""
    root = tmp_path_factory.mktemp("tv")
    for split, n in (("train", 6), ("val", 2)):
        _images(root / "imagenette2-160" / split, WNIDS, n)
    return root


def test_a_folder_is_the_same_image_folder_as_before(folder):
    from torchvision import datasets

    split = data_split(folder, "train")
    assert split == folder / "train"
    before = datasets.ImageFolder(str(folder / "train"), sdata.eval_transform(8))
    now = sdata.image_folder(split, 8)
    assert now.samples == before.samples and now.classes == ["a_cls", "b_cls"]
    assert all(torch.equal(now[i][0], before[i][0]) and now[i][1] == before[i][1] for i in range(len(before)))


def test_a_spec_reaches_timm_create_dataset_with_timm_split_names(monkeypatch):
    seen = {}

    def fake(name, **kwargs):
        seen.update(name=name, **kwargs)
        return ["sample"]

    monkeypatch.setattr("timm.data.create_dataset", fake)
    split = data_split("hfds/some-org/imagenet-1k", "val", root="/cache", download=False)
    assert split == DataSplit("hfds/some-org/imagenet-1k", "validation", "/cache", False)
    tf = sdata.eval_transform(8)
    assert create_dataset(split, tf) == ["sample"]
    assert seen == {"name": "hfds/some-org/imagenet-1k", "root": "/cache", "split": "validation", "download": False,
                    "transform": tf}
    assert data_split("wds/shards", "train").split == "train"


def test_a_real_timm_spec_on_a_folder_keeps_the_selection_split(folder):
    """``torch/folder`` through timm's own create_dataset (it finds ``val/`` for ``validation``)."""
    val = create_dataset(data_split("torch/folder", "val", root=folder))
    assert len(val) == 6 and val.samples[0][0].startswith(str(folder / "val"))
    x, y = selection_images(data_split("torch/folder", "train", root=folder), 8, per_class=2)
    x0, y0 = selection_images(folder / "train", 8, per_class=2)
    assert torch.equal(x, x0) and torch.equal(y, y0) and len(y) == 4


def test_torchvision_imagenette_layout_loads_offline(imagenette, monkeypatch):
    import torchvision.datasets.imagenette as tv

    monkeypatch.setattr(tv, "download_and_extract_archive", lambda *a, **k: pytest.fail("downloaded"))
    from torchvision import datasets

    ds = create_dataset(data_split("torch/imagenette2-160", "val", root=imagenette))
    assert type(ds).__name__ == "Imagenette" and len(ds) == 4
    same = datasets.ImageFolder(str(imagenette / "imagenette2-160" / "val"))
    assert ds._samples == same.samples  # the shared imagenette2-160 folder, read either way
    x, y = selection_images(data_split("torch/imagenette2-160", "train", root=imagenette), 8, per_class=1)
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]


def test_imagenette_is_never_downloaded_unless_asked(tmp_path, monkeypatch):
    import torchvision.datasets.imagenette as tv

    monkeypatch.setattr(tv, "download_and_extract_archive", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(DataError) as e:
        create_dataset(data_split("torch/imagenette2-160", "train", root=tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "torch/imagenette2-160" in msg and "dataset_download: true" in msg
    calls = []
    monkeypatch.setattr(tv, "download_and_extract_archive", lambda url, root, md5: calls.append(url))
    with pytest.raises(DataError):  # the fake download leaves nothing to read, but it was asked for
        create_dataset(data_split("torch/imagenette2-160", "train", root=tmp_path, download=True))
    assert calls and calls[0].endswith("imagenette2-160.tgz")


def test_a_bad_spec_is_one_line_naming_it():
    with pytest.raises(DataError) as e:
        create_dataset(data_split("torch/no-such-set", "train", root="/nowhere"))
    assert "\n" not in str(e.value) and "torch/no-such-set" in str(e.value)
    with pytest.raises(DataError, match="data folder /nowhere/train: not found"):
        create_dataset(data_split("/nowhere", "train"))


class _Table(Dataset):
    """A dataset without file names (as an HF table)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return Image.new("RGB", (8, 8)), i % 2


class _Stream(IterableDataset):
    def __iter__(self):
        yield Image.new("RGB", (8, 8)), 0


def test_selection_needs_file_names_and_training_a_map_style_dataset(monkeypatch):
    from stresnet.train.data import TrainLoader

    monkeypatch.setattr("timm.data.create_dataset",
                        lambda name, **k: _Table() if name.startswith("hfds") else _Stream())
    with pytest.raises(DataError, match=r"hfds/t\[train\]: the selection split and calibration need file names"):
        selection_images(data_split("hfds/t", "train"), 8)
    with pytest.raises(DataError, match=r"wds/s\[train\]: training needs a map-style dataset"):
        TrainLoader(data_split("wds/s", "train"), 8, 2)
    assert len(TrainLoader(data_split("hfds/t", "train"), 8, 2)) == 2  # an HF table trains


def test_recipe_split_names_the_download_and_checks_its_flag(folder, tmp_path):
    from stresnet.recipes.config import RecipeError
    from stresnet.recipes.stages.common import ClassifyRun

    def run(**recipe):
        return ClassifyRun({"_path": "r.yaml", **recipe}, tmp_path, tmp_path / "results.json")

    assert run(data=str(folder)).split("val") == folder / "val"
    with pytest.raises(RecipeError, match="--set data=torch/imagenette2-160 --set data_dir=DIR"):
        run(data=str(tmp_path / "absent")).split("train")
    spec = run(data="torch/imagenette2-160", data_dir="/d", dataset_download=True).split("val")
    assert spec == DataSplit("torch/imagenette2-160", "validation", "/d", True)
    with pytest.raises(RecipeError, match="dataset_download must be true or false"):
        run(data="hfds/x", dataset_download="yes").split("train")


def test_the_search_folder_of_imagenette_and_of_other_specs(imagenette, tmp_path):
    from stresnet.recipes.config import RecipeError
    from stresnet.recipes.stages.common import ClassifyRun

    run = ClassifyRun({"_path": "r.yaml", "data": "torch/imagenette2-160", "data_dir": str(imagenette)}, tmp_path,
                      tmp_path / "results.json")
    assert run.data == imagenette / "imagenette2-160"
    with pytest.raises(RecipeError, match="data hfds/x is a dataset spec; the search stage reads a folder"):
        ClassifyRun({"_path": "r.yaml", "data": "hfds/x"}, tmp_path, tmp_path / "results.json").data
