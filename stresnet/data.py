"""Image-folder data for recipes, search calibration and evaluation (Imagenette, ImageNet layouts)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(size: int, crop_pct: float = 0.875):
    """Resize to ``size / crop_pct`` then centre-crop ``size`` (timm's eval pipeline; 128 -> 146 -> 128)."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(int(round(size / crop_pct))),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def image_folder(root: str | Path, size: int) -> Dataset:
    """An ImageFolder (class index = sorted folder names) with the eval transform."""
    from torchvision import datasets

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root}: not found")
    return datasets.ImageFolder(str(root), eval_transform(size))


def eval_loader(root: str | Path, size: int, batch_size: int = 128, workers: int = 1) -> DataLoader:
    return DataLoader(image_folder(root, size), batch_size=batch_size, num_workers=workers)


def calibration_images(root: str | Path, n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images drawn at random (fixed ``seed``) from an ImageFolder: one eval-transformed batch and its labels."""
    ds = image_folder(root, size)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(n, len(ds))].sort().values.tolist()
    batches = list(DataLoader(Subset(ds, idx), batch_size=64, num_workers=1))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
