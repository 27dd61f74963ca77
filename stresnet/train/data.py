"""Training and validation loaders over a folder or a timm dataset spec, deterministic and DDP-aware.

Data: whatever :func:`stresnet.data.create_dataset` opens (``<folder>/<split>`` ImageFolder, or a
:class:`~stresnet.data.DataSplit`); training needs a map-style dataset (streaming ``wds`` / ``tfds`` / ``hfids``
cannot be sampled per index, so they are refused with one line), evaluation takes either.

Determinism: the *order* of samples in an epoch comes from a
:class:`~torch.utils.data.DistributedSampler` seeded with ``seed`` and
``set_epoch(epoch)`` (with one replica when ``torch.distributed`` is not
initialised), and the *augmentation* of each sample is drawn from an RNG
seeded by ``(seed, epoch, index)``. So what the model sees in an epoch depends
on ``(seed, epoch)`` only: not on the number of workers, not on the global RNG
state, and not on the world size (under DDP rank ``r`` gets ``order[r::world]``,
so a global batch of ``world * b`` holds the same images, identically
augmented, as a single-process batch of the same size).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset

from ..data import (IMAGENET_MEAN, IMAGENET_STD, DataSplit, Folder, create_dataset, eval_transform, map_style,
                    reading_of, sample_names, split_indices)
from ..utils.distributed import dist_info

__all__ = ["train_transform", "eval_transform", "SeededAugment", "TrainLoader", "train_loader",
           "val_loader", "split_part", "seed_worker", "sample_seed"]


def train_transform(input_size: int, scale: tuple[float, float] = (0.35, 1.0), hflip: float = 0.5,
                    interpolation: str = "bilinear", mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> Callable:
    """timm's training pipeline: RandomResizedCrop(``scale``) + horizontal flip, ``mean``/``std`` (default
    ImageNet's), no colour jitter."""
    from timm.data import create_transform

    return create_transform(input_size, is_training=True, scale=scale, hflip=hflip, color_jitter=None,
                            interpolation=interpolation, mean=mean, std=std)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a hash of the three numbers)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python's, numpy's and torch's CPU RNG for the block, then put their states back."""
    py, nps, gen = random.getstate(), np.random.get_state(), torch.random.default_generator
    t = gen.get_state()
    random.seed(seed)
    np.random.seed(seed)
    gen.manual_seed(seed)  # CPU generator only: CUDA generators are left alone
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)
        gen.set_state(t)


class SeededAugment(Dataset):
    """A dataset of ``(PIL image, label)`` with a random transform seeded per ``(seed, epoch, index)``."""

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        img, target = self.base[index]
        with _seeded_rngs(sample_seed(self.seed, self.epoch, index)):
            img = self.transform(img)
        return img, target


def seed_worker(worker_id: int) -> None:
    """Seed numpy and python ``random`` in a loader worker from its torch seed (which the loader's generator fixes)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def split_part(ds: Dataset, root: object, part: str | None) -> Dataset:
    """``ds`` itself (``part`` None), or its ``fit`` / ``selection`` part (:func:`stresnet.data.split_indices`)."""
    if part is None:
        return ds
    return Subset(ds, split_indices(sample_names(ds, root))[part])


class TrainLoader:
    """Builds one epoch's :class:`DataLoader` at a time: ``for x, y in train.epoch(e)``.

    ``batch_size`` is per process. Incomplete last batches are dropped (so no
    BatchNorm sees a batch of one and every rank does the same number of steps).
    ``part="fit"`` trains on the folder without its selection split and ``ILSVRC2012_val_*`` files.
    """

    def __init__(self, root: str | Path | Folder | DataSplit, input_size: int, batch_size: int, seed: int = 0, workers: int = 1,
                 scale: tuple[float, float] = (0.35, 1.0), pin_memory: bool = False, part: str | None = None):
        folder = map_style(create_dataset(root), root, "training")
        self.classes = getattr(folder, "classes", None)
        self.folder = split_part(folder, root, part)
        reading = reading_of(root)
        self.dataset = SeededAugment(self.folder, train_transform(input_size, scale=scale,
                                                                  interpolation=reading.interpolation,
                                                                  mean=reading.mean, std=reading.std), seed)
        self.rank, self.world = dist_info()
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=seed, drop_last=False)
        self.batch_size, self.seed, self.workers, self.pin_memory = batch_size, seed, workers, pin_memory
        if len(self) == 0:
            raise ValueError(f"training data {root}: {len(self.folder)} images is less than one batch "
                             f"({batch_size} per process x {self.world} processes)")

    def __len__(self) -> int:
        """Batches per epoch (per process)."""
        return len(self.sampler) // self.batch_size

    def epoch(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 2**31 + self.rank))  # worker base seeds
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=self.workers, worker_init_fn=seed_worker, generator=g,
                          pin_memory=self.pin_memory)


def train_loader(root: str | Path | Folder | DataSplit, input_size: int, batch_size: int, seed: int = 0, workers: int = 1,
                 **kwargs) -> TrainLoader:
    return TrainLoader(root, input_size, batch_size, seed=seed, workers=workers, **kwargs)


def val_loader(root: str | Path | Folder | DataSplit, input_size: int, batch_size: int, workers: int = 1,
               pin_memory: bool = False, part: str | None = None) -> DataLoader:
    """Eval loader (Resize(size/0.875) + CenterCrop); under DDP rank ``r`` gets images ``r::world`` (no padding,
    so summing correct counts over ranks gives the exact single-process accuracy). ``part="selection"``: only
    the selection split of a training folder (what hyper-parameters are chosen on)."""
    ds = split_part(create_dataset(root, eval_transform(input_size, reading=reading_of(root))), root, part)
    rank, world = dist_info()
    if world > 1 and not isinstance(ds, IterableDataset):  # timm's streaming readers shard by rank themselves
        ds = Subset(ds, list(range(rank, len(ds), world)))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, worker_init_fn=seed_worker,
                      pin_memory=pin_memory)
