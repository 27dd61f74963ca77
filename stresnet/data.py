"""Recipe data for training, evaluation, search calibration and selection: image folders (Imagenette, ImageNet
layouts), timm dataset specs (``hfds/...``, ``wds/...``, ``tfds/...``, ``torch/...`` through
:func:`timm.data.create_dataset`) and torchvision's Imagenette (``torch/imagenette2-160``, downloadable)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm's dataset-name prefixes (timm.data.create_dataset); anything else is a folder path
TIMM_PREFIXES = ("hfds", "hfids", "tfds", "wds", "torch")
# recipe split -> timm split (timm's train.py defaults: --train-split train --val-split validation)
TIMM_SPLITS = {"train": "train", "val": "validation"}
# torchvision's Imagenette, named as timm names torchvision datasets (``torch/<name>``) after its archive stem,
# which is also the folder it extracts to under ``data_dir`` (``<data_dir>/imagenette2-160/{train,val}/<wnid>/``)
IMAGENETTE_SIZES = {"imagenette2-160": "160px", "imagenette2-320": "320px", "imagenette2": "full"}


@dataclass(frozen=True)
class Reading:
    """How a model reads an image folder: its normalisation, resize interpolation and eval crop, and what the
    class folders mean. The defaults are the recipes' Imagenette reading (ImageNet mean/std, bilinear, crop
    0.875, targets = sorted folder index). ``labels="imagenet-1k"``: the class folders are ImageNet synsets
    (Imagenette's are) and a target is the synset's ImageNet-1k index, so a 1000-class model is trained,
    calibrated and scored on its own classes."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    labels: str | None = None

    def __post_init__(self) -> None:
        if self.labels not in LABEL_SPACES:
            raise ValueError(f"labels {self.labels!r}: expected one of {', '.join(map(str, LABEL_SPACES))}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation {self.interpolation!r}: expected bilinear, bicubic or nearest")

    @classmethod
    def of_config(cls, config: dict, labels: str | None = None) -> "Reading":
        """From a timm data config (``resolve_data_config``: mean, std, interpolation, crop_pct)."""
        return cls(tuple(config["mean"]), tuple(config["std"]), str(config["interpolation"]),
                   float(config["crop_pct"]), labels)

    def data_config(self, size: int) -> dict:
        """This reading as a timm data config at ``size`` px (what ``timm.data.create_transform`` takes)."""
        return {"input_size": (3, size, size), "interpolation": self.interpolation, "mean": self.mean,
                "std": self.std, "crop_pct": self.crop_pct, "crop_mode": "center"}


@dataclass(frozen=True)
class Folder:
    """An image folder with its :class:`Reading`; ``folder / "train"`` keeps the reading. Path-like, so code
    that only needs the path (fingerprints, messages) takes it as before."""

    path: Path
    reading: Reading

    def __truediv__(self, name: str) -> "Folder":
        return Folder(self.path / name, self.reading)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def is_dir(self) -> bool:
        return self.path.is_dir()


LABEL_SPACES = (None, "imagenet-1k")


def reading_of(source: object) -> Reading:
    """The :class:`Reading` a data source carries (a :class:`Folder`'s), else the default one."""
    return source.reading if isinstance(source, Folder) else Reading()


def imagenet_index() -> dict[str, int]:
    """WordNet synset -> ImageNet-1k class index, from timm's bundled synset list (no download)."""
    from timm.data import ImageNetInfo

    return {synset: i for i, synset in enumerate(ImageNetInfo("imagenet-1k").label_names())}


def _target_map(root: Path, labels: str | None) -> Callable[[int], int] | None:
    """The target transform of ``labels`` for the ImageFolder at ``root`` (None: folder index as is)."""
    if labels is None:
        return None
    from torchvision.datasets.folder import find_classes

    classes, _ = find_classes(str(root))
    index = imagenet_index()
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DataError(f"{root / unknown[0]}: {unknown[0]!r} is not an ImageNet-1k synset (labels: {labels})")
    table = [index[c] for c in classes]
    return table.__getitem__


class DataError(FileNotFoundError):
    """Data that cannot be opened; one line naming the folder or dataset spec. A FileNotFoundError, so that every
    command already reports it as one line without a traceback."""


@dataclass(frozen=True)
class DataSplit:
    """One split of a dataset *spec* (what ``<folder>/<split>`` is for folder data): ``name`` as timm's
    ``--dataset`` (``hfds/imagenet-1k``), ``split`` as timm's (``train`` / ``validation``), ``root`` as timm's
    ``--data-dir``, ``download`` as timm's ``--dataset-download`` (never implied)."""

    name: str
    split: str
    root: str | None = None
    download: bool = False

    def __str__(self) -> str:
        return f"{self.name}[{self.split}]" + (f" (root {self.root})" if self.root else "")


def is_spec(data: str | Path) -> bool:
    """A timm dataset spec (``hfds/...``, ``wds/...``, ``torch/...``), not a folder path. An existing folder of
    the same name stays a folder."""
    prefix, sep, rest = str(data).partition("/")
    return bool(sep and rest) and prefix.lower() in TIMM_PREFIXES and not Path(data).exists()


def data_split(data: str | Path, split: str, root: str | Path | None = None,
               download: bool = False) -> Path | DataSplit:
    """What a recipe's ``data`` value means for ``split`` (``train`` / ``val``): ``<data>/<split>`` for a folder
    (today's layout), a :class:`DataSplit` for a spec (``val`` -> timm's ``validation``, other names as given)."""
    if not is_spec(data):
        return Path(data) / split
    return DataSplit(str(data), TIMM_SPLITS.get(split, split), None if root is None else str(root), bool(download))


def _imagenette(src: DataSplit, transform: Callable | None) -> Dataset:
    from torchvision.datasets import Imagenette

    stem = src.name.partition("/")[2].lower()
    if src.root is None:
        raise DataError(f"dataset {src.name}: needs a root folder (recipe field data_dir)")
    split = "val" if src.split in ("val", "validation") else src.split
    try:
        return Imagenette(src.root, split=split, size=IMAGENETTE_SIZES[stem], download=src.download,
                          transform=transform)
    except (RuntimeError, ValueError, OSError) as e:  # "Dataset not found ...", a failed download, no split
        hint = "" if src.download else " (set dataset_download: true to download it)"
        raise DataError(f"dataset {src}: {str(e).splitlines()[0]}{hint}") from None


def _is_imagenette(src: DataSplit) -> bool:
    prefix, _, stem = src.name.partition("/")
    return prefix.lower() == "torch" and stem.lower() in IMAGENETTE_SIZES


def imagenette_folder(src: DataSplit) -> Path | None:
    """The folder torchvision's Imagenette of ``src`` lives in (``<root>/imagenette2-160``, an ImageFolder root
    with ``train/`` and ``val/``), downloading it first when ``src.download``; None for other specs."""
    if not _is_imagenette(src):
        return None
    _imagenette(src, None)
    return Path(src.root) / src.name.partition("/")[2].lower()


def create_dataset(source: str | Path | Folder | DataSplit, transform: Callable | None = None) -> Dataset:
    """THE dataset of one split: a folder path -> torchvision ``ImageFolder`` (class index = sorted folder names;
    the same samples in the same order as ever; a :class:`Folder` maps targets as its reading says); a
    :class:`DataSplit` -> torchvision's Imagenette for ``torch/imagenette2*``, else
    :func:`timm.data.create_dataset` (map-style or iterable, as timm builds it).
    Any failure is one :class:`DataError` line naming the folder or spec."""
    if not isinstance(source, DataSplit):
        from torchvision import datasets

        root = Path(source)
        if not root.is_dir():
            raise DataError(f"data folder {root}: not found")
        return datasets.ImageFolder(str(root), transform, target_transform=_target_map(root, reading_of(source).labels))
    if _is_imagenette(source):
        return _imagenette(source, transform)
    from timm.data import create_dataset as timm_dataset

    try:
        return timm_dataset(source.name, root=source.root, split=source.split, download=source.download,
                            transform=transform)
    except Exception as e:  # timm raises asserts, ImportErrors, HF / TF errors: one line naming the spec
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"dataset {source}: {msg}") from None


def sample_names(ds: Dataset, source: object = "") -> list[tuple[str, int]]:
    """``(file name, label)`` of every sample, for :func:`split_indices`: torchvision's ``ImageFolder`` and
    ``Imagenette``, timm's folder / tar readers. Datasets without file names (``hfds``, ``wds``, ``tfds``) have
    no selection split: hashing indices would tie the split to the row order of a table we do not own."""
    for attr in ("samples", "_samples"):
        if isinstance(getattr(ds, attr, None), list):
            return getattr(ds, attr)
    reader = getattr(ds, "reader", None)
    if isinstance(getattr(reader, "samples", None), list):
        return [(str(s[0].name if hasattr(s[0], "name") else s[0]), int(s[1])) for s in reader.samples]
    raise DataError(f"dataset {source}: the selection split and calibration need file names (a folder, "
                    f"torch/imagenette2-*, or timm's folder/tar reader); {type(ds).__name__} has none")


def map_style(ds: Dataset, source: object, what: str) -> Dataset:
    """``ds`` when it supports ``len`` and indexing; one line otherwise (streaming ``wds`` / ``tfds`` / ``hfids``)."""
    if isinstance(ds, IterableDataset):
        raise DataError(f"dataset {source}: {what} needs a map-style dataset (folder, hfds, torch/...), "
                        f"not a streaming one")
    return ds


def eval_transform(size: int, crop_pct: float | None = None, reading: Reading | None = None):
    """Resize to ``size / crop_pct`` then centre-crop ``size`` (timm's eval pipeline; 128 -> 146 -> 128), with
    ``reading``'s interpolation, crop (unless ``crop_pct``) and normalisation (default: :class:`Reading`'s)."""
    from torchvision import transforms as T

    reading = reading or Reading()
    crop = reading.crop_pct if crop_pct is None else crop_pct
    return T.Compose([
        T.Resize(int(round(size / crop)), interpolation=T.InterpolationMode(reading.interpolation)),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(reading.mean, reading.std),
    ])


def image_folder(root: str | Path | Folder | DataSplit, size: int) -> Dataset:
    """The dataset of one split (a folder or a :class:`DataSplit`) with the eval transform of its reading."""
    return create_dataset(root, eval_transform(size, reading=reading_of(root)))


def eval_loader(root: str | Path | DataSplit, size: int, batch_size: int = 128, workers: int = 1) -> DataLoader:
    return DataLoader(image_folder(root, size), batch_size=batch_size, num_workers=workers)


SELECTION_PER_CLASS = 100  # Imagenette: 10 classes -> 1000 selection images out of 9469 in train/
ILSVRC_VAL_PREFIX = "ILSVRC2012_val_"


def is_ilsvrc_val(path: str | Path) -> bool:
    """Imagenette's ``train/`` holds ImageNet *validation* images (``ILSVRC2012_val_*``); they are never used to
    fit, calibrate or select, so that ImageNet-val numbers of anything built here stay clean."""
    return Path(path).name.startswith(ILSVRC_VAL_PREFIX)


def _name_key(path: str) -> str:
    return hashlib.sha256(Path(path).name.encode()).hexdigest()


def split_indices(samples: Sequence[tuple[str, int]], per_class: int = SELECTION_PER_CLASS) -> dict[str, list[int]]:
    """THE selection split of a training split's ``(file name, label)`` list (:func:`sample_names`): indices
    ``fit``, ``selection``, ``excluded``.

    ``selection``: per class, the ``per_class`` files whose name has the smallest sha256 (deterministic, independent
    of the listing order, the seed and the machine), at most half of the class (a small folder keeps images to
    fit); every configuration choice (estimator, grid step, route, ...) is scored on it, never on ``val``.
    ``excluded``: ``ILSVRC2012_val_*`` files. ``fit``: the rest, the only images calibration may draw. The three
    are disjoint and cover ``samples``.
    """
    if per_class < 0:
        raise ValueError(f"selection per_class must be >= 0, got {per_class}")
    excluded = [i for i, (path, _) in enumerate(samples) if is_ilsvrc_val(path)]
    by_class: dict[int, list[int]] = {}
    for i, (path, label) in enumerate(samples):
        if not is_ilsvrc_val(path):
            by_class.setdefault(label, []).append(i)
    selection = sorted(i for idx in by_class.values()
                       for i in sorted(idx, key=lambda i: _name_key(samples[i][0]))[:min(per_class, len(idx) // 2)])
    chosen = set(selection) | set(excluded)
    return {"fit": [i for i in range(len(samples)) if i not in chosen], "selection": selection, "excluded": excluded}


def _stack(ds: Dataset, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(DataLoader(Subset(ds, list(idx)), batch_size=64, num_workers=1))
    if not batches:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def calibration_images(root: str | Path | DataSplit, n: int, size: int, seed: int = 0,
                       per_class: int = SELECTION_PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images drawn at random (fixed ``seed``) from the ``fit`` part of a training split (never the selection
    split, never ``ILSVRC2012_val_*``): one eval-transformed batch and its labels."""
    ds = image_folder(root, size)
    fit = split_indices(sample_names(ds, root), per_class)["fit"]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(fit), generator=g)[: min(n, len(fit))].sort().values.tolist()
    return _stack(ds, [fit[i] for i in pick])


def selection_images(root: str | Path | DataSplit, size: int,
                     per_class: int = SELECTION_PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole selection split (see :func:`split_indices`) of the training split ``root`` (a folder or a
    :class:`DataSplit` with file names), eval-transformed."""
    ds = image_folder(root, size)
    return _stack(ds, split_indices(sample_names(ds, root), per_class)["selection"])
