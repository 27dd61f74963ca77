"""Model cards for the zoo, generated from measured numbers (never hand-typed).

A card is YAML front matter in the Hub's format (library_name, license,
datasets, model-index metrics) plus sections: model details (params, GMACs,
int8 flash, peak RAM from :func:`stresnet.cost.profile`), usage, results with
the exact recipe command, sha256 and citation. Where no weights have been
published yet the card says so instead of quoting a number.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

CITATIONS = {
    "compressnas": "Sah, Chhabra, Durnerin. CompressNAS: global rank selection for Tucker-2 compression of CNNs. "
                   "arXiv:2511.11716 (CAI 2026).",
    "stresnet": "STResNet: selectively Tucker-2-decomposed ResNet-18s for microcontrollers. arXiv:2601.05364.",
}


def _front_matter(name: str, record: Mapping[str, Any] | None, dataset: str) -> str:
    lines = ["---", "library_name: timm", "license: apache-2.0", "tags:", "- image-classification",
             "- timm", "- tensor-decomposition", "- tucker2", "datasets:", f"- {dataset}"]
    metrics = (record or {}).get("metrics", {})
    if "top1" in metrics:
        lines += [
            "model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-classification",
            "    dataset:", f"      name: {dataset}", f"      type: {dataset}", "    metrics:",
            "    - type: accuracy", "      name: top-1", f"      value: {100 * metrics['top1']:.2f}",
        ]
        if "top5" in metrics:
            lines += ["    - type: accuracy", "      name: top-5", f"      value: {100 * metrics['top5']:.2f}"]
    return "\n".join(lines + ["---", ""])


def model_card(name: str, profile: Mapping[str, Any], record: Mapping[str, Any] | None = None,
               notes: str = "") -> str:
    """The card of ``arch.tag`` from its profile (``Profile.to_dict()``) and published record, if any."""
    arch, _, tag = name.partition(".")
    dataset = "imagenette" if tag == "imagenette" else "imagenet-1k"
    family = "compressnas" if arch.startswith("stresnet18") else "stresnet"
    size = profile.get("input_size", [3, 224, 224])
    out = [_front_matter(name, record, dataset), f"# {name}", ""]
    out += [
        "## Model details", "",
        f"- Architecture: timm `resnet18` + the rank plan `stresnet/zoo/plans/{arch}.json` (Tucker-2 layers made of plain convs)",
        f"- Params: {profile['params'] / 1e6:.3f} M",
        f"- GMACs at {size[-1]}x{size[-1]}: {profile['macs'] / 1e9:.3f}",
        f"- int8 flash: {profile['flash_bytes'] / 1024:.1f} KiB",
        f"- Peak activation RAM (int8, batch 1): {profile['peak_ram_bytes'] / 1024:.1f} KiB",
        "",
        "## Usage", "",
        "```python",
        "import timm, stresnet  # importing stresnet registers the zoo",
        f"model = timm.create_model('{name}', pretrained=True).eval()",
        "```",
        "",
        "## Results", "",
    ]
    if record and record.get("metrics"):
        m = record["metrics"]
        out += [f"| metric | value |", "|---|---|"]
        out += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items()]
        out += ["", f"Reproduce: `{record.get('recipe', '')}`", "", f"sha256: `{record['sha256']}`", ""]
    else:
        out += ["No weights are published for this tag yet: nothing has been measured, so no accuracy is quoted.", ""]
    if notes:
        out += [notes, ""]
    out += ["## Citation", "", CITATIONS[family], ""]
    return "\n".join(out)


def write_cards(out_dir: Path, profiles: Mapping[str, Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """One card per ``arch.tag`` in ``profiles`` (records by the same keys), written to ``out_dir/<name>.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, prof in sorted(profiles.items()):
        path = out_dir / f"{name}.md"
        path.write_text(model_card(name, prof, records.get(name)))
        paths.append(path)
    return paths


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
