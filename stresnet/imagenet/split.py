"""The 1000-way evaluation split: Imagenette's ImageNet *validation* images (``ILSVRC2012_val_*``) with their
ImageNet-1k labels. An ImageNet-trained model never saw them, so they give a clean (small) 1000-way top-1.

The files are exactly those :func:`stresnet.data.split_indices` puts in ``excluded`` (it is called here, so
the two cannot drift apart): no calibration, selection or fine-tune ever draws them."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..data import DataError, create_dataset, imagenet_index, sample_names, split_indices

__all__ = ["imagenet_index", "imagenet_val_samples"]


def imagenet_val_samples(folder: str | Path, splits: Sequence[str] = ("train", "val")) -> list[tuple[str, int]]:
    """``(path, ImageNet-1k label)`` of every ``ILSVRC2012_val_*`` file in ``folder/<split>/<synset>/`` (an
    Imagenette root), in ``splits`` order then the folder's sample order. A class folder that is not an
    ImageNet-1k synset is one :class:`~stresnet.data.DataError` line."""
    index = imagenet_index()
    out: list[tuple[str, int]] = []
    for split in splits:
        ds = create_dataset(Path(folder) / split)
        samples = sample_names(ds, Path(folder) / split)
        classes: list[str] = ds.classes
        for i in split_indices(samples)["excluded"]:
            path, label = samples[i]
            synset = classes[label]
            if synset not in index:
                raise DataError(f"{Path(folder) / split / synset}: {synset!r} is not an ImageNet-1k synset")
            out.append((path, index[synset]))
    return out
