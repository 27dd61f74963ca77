"""The zoo index lists the YOLO detectors from their recipes' results JSONs (no ultralytics needed to render)."""
from __future__ import annotations

import json
from pathlib import Path

from stresnet.detect.card import detect_index_markdown, detect_results

REPO = Path(__file__).resolve().parents[1]


def _results(params: int, map_c: float) -> dict:
    return {"task": "detect", "arch": "yolov5n.yaml", "command": "stresnet recipe run recipes/y.yaml",
            "stages": [{"id": "card", "type": "card", "params": {"variant": "yolov5n_2x", "tag": "tiny"},
                        "result": {}}],
            "search": {"budget": "2x"},
            "base": {"map50_95": 0.001},
            "compressed": {"params": params, "macs": 2 * params, "flash_bytes": params + 1024, "params_ratio": 2.0,
                           "map50_95": map_c},
            "agreement": {"finetuned": {"map50_95": 0.25}}}


def test_detectors_are_found_by_task_and_named_by_their_card_stage(tmp_path):
    (tmp_path / "y.json").write_text(json.dumps(_results(1_327_000, 0.0021)))
    (tmp_path / "evidence_8x.json").write_text(json.dumps({"arms": {}}))  # a classification result: ignored
    (tmp_path / "broken.json").write_text("{not json")  # unreadable: ignored, not fatal
    found = detect_results(tmp_path)
    assert list(found) == ["yolov5n_2x.tiny"]
    md = detect_index_markdown(found)
    row = next(line for line in md.splitlines() if line.startswith("| [yolov5n_2x.tiny]"))
    assert "| 1.327 |" in row and "| 2.00x |" in row and "0.0010 / 0.0021" in row and "| 0.2500 |" in row


def test_no_detect_results_means_no_section(tmp_path):
    assert detect_index_markdown(detect_results(tmp_path)) == ""


def test_committed_index_lists_every_committed_detector():
    index = (REPO / "zoo_cards" / "README.md").read_text()
    found = detect_results(REPO / "recipes" / "results")
    assert found, "recipes/results has no detect results"
    for name in found:
        assert f"[{name}]({name}.md)" in index and (REPO / "zoo_cards" / f"{name}.md").is_file()
