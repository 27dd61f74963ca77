"""timm's own model tests (``tests/test_models.py`` of the installed timm's sdist) on every ``stresnet*`` model.

``scripts/timm_tests.sh`` fetches the file into ``.cache/timm-tests/timm-<version>/``
(git-ignored). Here a fresh process imports stresnet (registering the zoo) and runs
that file with ``-k stresnet``; its pretrained tests (``test_model_load_pretrained``,
``test_model_features_pretrained``) load weights made on the spot and published,
exactly as ``stresnet publish`` does, into a temporary offline Hub cache and registry.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch

import stresnet  # noqa: F401  (registers the zoo)
from stresnet.zoo.hub import install_to_cache, publish, register

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / ".cache" / "timm-tests" / f"timm-{timm.__version__}"
# tests of timm's file that take a pretrained tag; all the others take every registered model
PRETRAINED_TESTS = ("test_model_load_pretrained", "test_model_features_pretrained")
# The whole file on all 10 models takes ~7 min on 2 busy cores, 80 % of it in the backward, FX and TorchScript
# tests. Those run on one model per stem kind (plain, Tucker-2, narrowed + projection) and on one EfficientNet-Lite0
# (the other variants differ only in ranks); every other test (cfgs on meta, forward, features, pretrained loads) runs on every model and tag.
# STRESNET_TIMM_SUITE_K=stresnet runs everything.
REPRESENTATIVES = ("stresnet18_2x", "stresnet18_8x", "stresnet_pico", "stresnet_lite0_2x")
SELECTION = os.environ.get("STRESNET_TIMM_SUITE_K") or (
    f"stresnet and (not (backward or torchscript or fx) or {' or '.join(REPRESENTATIVES)})")
HEAVY = ("test_model_backward", "test_model_forward_torchscript", "test_model_forward_fx")


def model_of(test_id: str) -> str:
    """The model name in a pytest id such as ``test_model_forward[1-stresnet18_2x]``."""
    return next(p for p in test_id.partition("[")[2].rstrip("]").split("-") if p.startswith("stresnet"))


def publish_random_weights(hub_cache: Path, registry: Path, work: Path) -> list[str]:
    """Publish seeded random weights for every pretrained stresnet tag into ``hub_cache`` and ``registry``."""
    names = timm.list_pretrained("stresnet*")
    for name in names:
        torch.manual_seed(0)
        num_classes = timm.get_pretrained_cfg(name).num_classes
        model = timm.create_model(name.partition(".")[0], num_classes=num_classes).eval()
        record = publish(model, name, work / name, {"top1": 0.0}, "tests/test_timm_suite.py")
        register(name, record, registry)
        install_to_cache(work / name, record["hf_hub_id"], hub_cache)
    return names


def test_timms_model_tests_pass_on_every_stresnet_model(tmp_path: Path) -> None:
    if not (SUITE / "tests" / "test_models.py").is_file():
        pytest.skip(f"timm {timm.__version__}'s tests are not fetched: run scripts/timm_tests.sh")
    hub_cache, registry, report = tmp_path / "hub", tmp_path / "weights.json", tmp_path / "junit.xml"
    pretrained = publish_random_weights(hub_cache, registry, tmp_path / "published")
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}  # it hides the pretrained tests
    env.update(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", STRESNET_WEIGHTS_REGISTRY=str(registry),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    code = "import sys, pytest, stresnet; sys.exit(pytest.main(sys.argv[1:]))"
    args = ["tests/test_models.py", "-k", SELECTION, "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
            "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=SUITE, env=env, capture_output=True, text=True)
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes: dict[str, list[str]] = {}
    for case in ET.parse(report).iter("testcase"):
        result = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        outcomes.setdefault(result, []).append(case.get("name", ""))
    assert not outcomes.get("failure") and not outcomes.get("error"), proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every model and every pretrained tag went through timm's tests, the representatives through all of them
    passed = outcomes.get("passed", [])
    assert set(timm.list_models("stresnet*")) <= {model_of(name) for name in passed}, passed
    heavy = Counter(model_of(name) for name in passed if name.startswith(HEAVY))
    assert all(heavy[m] >= 5 for m in REPRESENTATIVES), heavy
    loaded = {model_of(name) for name in outcomes["passed"] if name.startswith(PRETRAINED_TESTS)}
    assert pretrained and loaded == set(pretrained), (loaded, pretrained)
