"""Shared fixtures: the ../shared folder (or $STRESNET_SHARED), skipped with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    path = Path(os.environ.get("STRESNET_SHARED", REPO.parent / "shared"))
    return path if path.is_dir() else None


@pytest.fixture
def shared() -> Path:
    path = shared_dir()
    if path is None:
        pytest.skip("../shared (or $STRESNET_SHARED) is absent: real-data test skipped")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads_kept():
    """Each test leaves torch's thread count as it found it: a test that calls ultralytics directly (a torch.hub
    YOLO entry) is not inside the product's :func:`~stresnet.detect.offline.threads_kept`, and before this fixture
    every test after ``test_detect.py``'s first detection ran on one thread."""
    from stresnet.detect.offline import threads_kept

    with threads_kept():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the machine is shared, and subprocess comparisons stay bitwise."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TREE_CLASSES, TREE_TRAIN, TREE_VAL = 3, 12, 4


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    """A tiny ImageFolder: 3 classes x 12 train / 4 val random 40x40 PNGs whose mean colour depends on the class."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", TREE_TRAIN), ("val", TREE_VAL)):
        for c in range(TREE_CLASSES):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.normal(110 + 20 * c, 50, size=(40, 40, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def regenerated_report(tmp_path_factory) -> Path:
    """`stresnet report` run once on the committed recipes and results, into a temporary folder:
    ``zoo_cards/`` there, and ``README.md`` (a copy of the committed one, its generated blocks rewritten)."""
    import shutil
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("report")
    shutil.copy(REPO / "README.md", out / "README.md")
    proc = subprocess.run([sys.executable, "-m", "stresnet", "report", "--recipes", "recipes", "--results",
                           "recipes/results", "--out", str(out / "zoo_cards"), "--readme", str(out / "README.md")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out
