"""Install-safe paths (issue #15, acceptance 3): ``pip install .`` (not editable) into a fresh venv, then, from an
empty folder, a tiny recipe and ``stresnet report`` write only under that folder.

The venv sees the test interpreter's site-packages through a path line in a ``.pth``
file (torch, timm ... are not reinstalled); the editable stresnet of that
site-packages is not activated by a plain path line, so ``import stresnet`` finds
the copy pip installed (checked). Bytecode caches (``__pycache__``) are not outputs
and are left out of the comparison.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a venv, a wheel build, a recipe and the full report: minutes on 2 cores


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (bytecode caches aside) with its mtime."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
        for f in files:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = p.lstat().st_mtime_ns
    return out


def _venv(tmp: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_host_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp / "src"  # a copy: the build writes build/ and *.egg-info beside its sources, never in the repo
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "stresnet", src / "stresnet", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "-q", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def test_installed_stresnet_writes_only_under_the_current_folder(tree, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    venv = _venv(tmp_path)
    python, cli = venv / "bin" / "python", venv / "bin" / "stresnet"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(inputs / "base.safetensors"))
    recipe = {"format": "stresnet-recipe/1", "name": "tiny", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3, "checkpoint": str(inputs / "base.safetensors")},
              "stages": [{"plan": {"file": "stresnet/zoo/plans/stresnet18_8x.json"}},  # the installed package's
                         {"decompose": {"eval": False}},
                         {"finetune": {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 4, "workers": 0,
                                       "warmup_epochs": 0}},
                         {"eval": {}}]}
    (inputs / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    work = tmp_path / "work"
    work.mkdir()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STRESNET_SHARED", "STRESNET_RUNS",
                                                             "STRESNET_RESULTS", "STRESNET_WEIGHTS_REGISTRY")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", MPLCONFIGDIR=str(tmp_path / "mpl"))
    where = subprocess.run([str(python), "-c", "import stresnet; print(stresnet.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the repo's editable one

    before = {"site": _files(site), "repo": _files(REPO)}
    run = subprocess.run([str(cli), "recipe", "run", str(inputs / "tiny.yaml"), "--device", "cpu", "--quiet"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([str(cli), "report", "--out", "cards"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=900)
    assert report.returncode == 0, report.stderr[-3000:]

    assert _files(site) == before["site"]  # nothing written into the install location
    assert _files(REPO) == before["repo"]  # nor into the source tree
    written = _files(work)
    assert "recipes/results/tiny.json" in written and "runs/tiny/finetune/stage.json" in written
    assert "cards/README.md" in written and "cards/stresnet18_8x.imagenette.md" in written
    assert not (inputs / "runs").exists() and sorted(p.name for p in inputs.iterdir()) == ["base.safetensors",
                                                                                            "tiny.yaml"]
