"""torch.hub sees every zoo variant in this repository and builds it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stresnet.zoo.models import VARIANTS, WeightsError

REPO = str(Path(__file__).resolve().parents[1])


def test_hubconf_offers_every_variant_with_help() -> None:
    # torch.hub.list/help take only GitHub repos (network); they read the same module the way this does
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    entries = {n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")}
    assert set(VARIANTS) <= entries
    assert "1/8 of the parameters" in hub.stresnet18_8x.__doc__


def test_hub_load_builds_the_zoo_model() -> None:
    model = torch.hub.load(REPO, "stresnet_pico", source="local", pretrained=False, num_classes=10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_hub_load_of_a_tag_without_weights_names_the_recipe() -> None:
    with pytest.raises(WeightsError, match=r"stresnet18_8x.in1k: none are published.*recipes/stresnet18_8x_in1k.yaml"):
        torch.hub.load(REPO, "stresnet18_8x", source="local", pretrained=True, tag="in1k")
