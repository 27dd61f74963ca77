"""Provenance in every results JSON and stage.json (issue #19): what a number was made with, on a tiny recipe.

The recipe is a random-weight resnet18 (3 classes) on ``conftest.tree`` at 32 px:
a shipped plan, decomposition, eval. The checks compare with independent
computations (hashlib, importlib.metadata, git), and ``stresnet report`` reads the
committed results the same with or without the new key.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from stresnet.recipes import load_recipe, run_recipe
from stresnet.utils.provenance import data_fingerprint, file_sha256

REPO = Path(__file__).resolve().parents[1]
KEYS = {"git", "versions", "hardware", "base_checkpoint", "data", "started", "seconds"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(tmp: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp / "base.safetensors"
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(path))
    return path


def _run(tree: Path, tmp: Path, base: Path) -> dict:
    recipe = {"format": "stresnet-recipe/1", "name": "prov", "data": str(tree), "input_size": 32,
              "base": {"model": "resnet18", "num_classes": 3, "checkpoint": str(base)},
              "stages": [{"plan": {"file": str(REPO / "stresnet/zoo/plans/stresnet18_8x.json")}},
                         {"decompose": {"eval": False}}, {"eval": {}}]}
    path = tmp / "prov.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_recipe(load_recipe(path), out_root=tmp / "runs", results_path=tmp / "prov.json", progress=False,
               log=lambda _: None)
    return json.loads((tmp / "prov.json").read_text())


def test_results_and_every_stage_json_carry_provenance(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # a git work tree: the commit is recorded
    base = _base(tmp_path)
    results = _run(tree, tmp_path, base)
    prov = results["provenance"]
    assert set(prov) == KEYS
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert prov["git"]["commit"] == head and isinstance(prov["git"]["dirty"], bool)
    for name in ("torch", "timm", "stresnet", "onnxruntime", "ultralytics"):
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = None
        assert prov["versions"][name] == expected, name
    assert prov["versions"]["python"].count(".") == 2
    assert prov["base_checkpoint"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert prov["data"] == [json.loads(json.dumps(data_fingerprint(tree)))]
    assert prov["data"][0]["files"] == 3 * (12 + 4)
    assert prov["hardware"]["torch_threads"] == 1
    assert (prov["hardware"]["gpu"] is None) == (not torch.cuda.is_available())
    assert prov["started"].endswith("+00:00") and prov["seconds"] > 0
    for stage in ("plan", "decompose", "eval"):
        saved = json.loads((tmp_path / "runs" / "prov" / stage / "stage.json").read_text())
        assert set(saved["provenance"]) == KEYS, stage
        assert saved["provenance"]["seconds"] <= prov["seconds"]
        assert saved["provenance"]["base_checkpoint"]["sha256"] == prov["base_checkpoint"]["sha256"]


def test_git_is_null_outside_a_repository(tree, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True).returncode == 0:
        pytest.skip("the temporary folder lies inside a git work tree")
    assert _run(tree, tmp_path, _base(tmp_path))["provenance"]["git"] is None


def test_data_fingerprint_changes_when_a_file_is_added_or_renamed(tree, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tree, copy)
    before = data_fingerprint(copy)
    assert before == {**data_fingerprint(tree), "path": str(copy)}  # names, not the folder's location
    extra = copy / "train" / "class0" / "new.png"
    shutil.copy(copy / "train" / "class0" / "0.png", extra)
    added = data_fingerprint(copy)
    assert added["files"] == before["files"] + 1 and added["names_sha256"] != before["names_sha256"]
    extra.rename(copy / "train" / "class1" / "new.png")  # same count, another class
    moved = data_fingerprint(copy)
    assert moved["files"] == added["files"] and moved["names_sha256"] not in (added["names_sha256"],
                                                                               before["names_sha256"])
    assert data_fingerprint(tmp_path / "absent") == {"path": str(tmp_path / "absent"), "files": None,
                                                      "names_sha256": None}


def test_file_sha256_is_hashlibs_and_sees_a_rewrite(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"b" * 3_000_001)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_ignores_provenance(tmp_path):
    """The evidence tables, card notes and detector index read from the committed results are the same when
    every results JSON also carries a provenance record."""
    from stresnet.detect.card import detect_index_markdown, detect_results
    from stresnet.zoo.report import card_notes, evidence_markdown, load_evidence

    results = REPO / "recipes" / "results"
    marked = tmp_path / "results"
    marked.mkdir()
    record = {"git": {"commit": "0" * 40, "dirty": True}, "versions": {"python": "3.11.7"}, "data": [],
              "hardware": {"cpu": "x", "gpu": None, "torch_threads": 2}, "started": "2026-01-01T00:00:00+00:00",
              "seconds": 1.0, "base_checkpoint": None}
    for path in results.glob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict):  # (zoo_verify.json is a list of rows, not a recipe's results)
            data = {**data, "provenance": record}
        (marked / path.name).write_text(json.dumps(data))
    shutil.copytree(results / "deploy", marked / "deploy")  # measured latency the evidence tables read

    def rendered(folder: Path) -> tuple[str, dict, str]:
        evidence, base = load_evidence(REPO / "recipes", folder)
        return evidence_markdown(evidence, base), card_notes(evidence, base), \
            detect_index_markdown(detect_results(folder))

    plain = rendered(results)
    assert plain[0] and plain[2]  # the committed results hold evidence and detector rows
    assert rendered(marked) == plain
