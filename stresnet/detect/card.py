"""Model cards of the YOLO variants, generated from a detect recipe's results JSON (never hand-typed).

    python -m stresnet.detect.card recipes/results/yolov5s_2x_coco_mini.json yolov5s_2x [--tag coco-mini]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

from ..zoo.cards import CITATIONS

UNITS = "u"  # ultralytics' yolov5{n,s}.yaml build the anchor-free YOLOv5nu / YOLOv5su heads


def _f(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "not measured"


def detect_card(results: Mapping[str, Any], variant: str, tag: str = "coco-mini") -> str:
    """The card of ``variant.tag`` (e.g. ``yolov5s_2x.coco-mini``) from the recipe results."""
    b, c = results.get("base", {}), results.get("compressed", {})
    a, s = results.get("agreement", {}), results.get("search", {})
    arch = results.get("arch", "yolov5s.yaml")
    base_name = arch.removesuffix(".yaml")
    imgsz = results.get("imgsz", 320)
    ti, tf = b.get("train", {}), c.get("train", {})
    out = ["---", "library_name: ultralytics", "license: agpl-3.0", "tags:", "- object-detection", "- ultralytics",
           "- tensor-decomposition", "- tucker2", "datasets:", f"- {tag}", "---", "",
           f"# {variant}.{tag}", "",
           f"YOLOv5{base_name.removeprefix('yolov5')}{UNITS} (ultralytics `{arch}`, which builds the anchor-free "
           f"'u' variant, not the original anchor-based YOLOv5) with the Tucker-2 ranks of "
           f"`stresnet/zoo/plans/{variant}.json`, found by the CompressNAS search at a "
           f"{s.get('budget', '2x')} params budget.", "",
           "**No pretrained COCO weights exist here.** This machine cannot download any (no ultralytics or COCO "
           "weights, no COCO images beyond the 159 of `coco-mini`), so the base was trained from scratch for "
           f"{ti.get('epochs', '?')} epochs on the 80 `coco-mini` train images. Its mAP is therefore near zero and "
           "says nothing about COCO quality; what is measured honestly is size, that the whole pipeline runs, and "
           "how faithful the compressed model is to the uncompressed one (agreement mAP). The paper's claim "
           "(2x of YOLOv5s with no mAP drop, 2x of YOLOv5n with -2.5 %) needs the full-COCO recipe "
           f"`recipes/{variant}_coco.yaml` on a machine with COCO and time.", "",
           "## Model details", "",
           "| | base | compressed |", "|---|---|---|",
           f"| params | {b.get('params', 0) / 1e6:.3f} M | {c.get('params', 0) / 1e6:.3f} M ({_f(c.get('params_ratio'), '.2f')}x fewer) |",
           f"| GMACs at {imgsz} px | {b.get('macs', 0) / 1e9:.3f} | {c.get('macs', 0) / 1e9:.3f} ({_f(c.get('macs_ratio'), '.2f')}x fewer) |",
           f"| GMACs at 640 px | {b.get('macs_640', 0) / 1e9:.3f} | {c.get('macs_640', 0) / 1e9:.3f} |",
           f"| int8 flash | {b.get('flash_bytes', 0) / 1024:.1f} KiB | {c.get('flash_bytes', 0) / 1024:.1f} KiB |",
           "", f"Search: MSE estimator (CompressNAS's normalised output MSE) on {s.get('calibration_images', '?')} "
           f"calibration train images at {imgsz} px, ILP over {s.get('searched_layers', '?')} convs; "
           f"{s.get('factorised_layers', '?')} factorised ({_f(s.get('seconds'), '.0f')} s)."
           + ({True: " This run's search reproduced the shipped plan exactly.",
               False: " This run's search did not reproduce the shipped plan."}.get(s.get("matches_expected_plan"), "")),
           "",
           "## Usage", "", "```python", "import torch",
           f"model = torch.hub.load('path/to/stresnet', '{variant}', source='local', pretrained=False)  # random weights",
           f"model = torch.hub.load('path/to/stresnet', '{variant}', source='local',",
           f"                       weights='runs/{results.get('name', '')}/finetune/model.safetensors')  # the recipe's",
           "results = model('image.jpg')  # ultralytics Results, .boxes", "```", "",
           "`pretrained=True` raises: no weights are published (see above).", "",
           f"## Results on {tag} val ({b.get('val_images', '?')} images, {imgsz} px, ultralytics' validator)", "",
           "| model | mAP50-95 | mAP50 | training |", "|---|---|---|---|",
           f"| base (from scratch) | {_f(b.get('map50_95'))} | {_f(b.get('map50'))} | {ti.get('epochs', '?')} epochs, {_f(ti.get('seconds'), '.0f')} s |",
           f"| compressed, zero-shot | {_f(c.get('zero_shot', {}).get('map50_95'))} | {_f(c.get('zero_shot', {}).get('map50'))} | - |",
           f"| compressed, fine-tuned | {_f(c.get('map50_95'))} | {_f(c.get('map50'))} | {tf.get('epochs', '?')} epochs, {_f(tf.get('seconds'), '.0f')} s |",
           "", "### Fidelity to the uncompressed model (agreement mAP)", "",
           f"The base's own predictions (confidence >= {a.get('conf', '?')}, at most {a.get('max_det', '?')} per "
           f"image, the most confident: {a.get('pseudo_boxes', '?')} boxes on {a.get('images', '?')} val images) are "
           "taken as ground truth and the compressed model is scored against them by ultralytics' validator. "
           "1.0 = the base's detections exactly. Fine-tuning trains on the coco-mini labels (no distillation), so "
           "it may move the compressed model away from the base's detections.", "",
           "| compressed model | agreement mAP50-95 | agreement mAP50 |", "|---|---|---|"]
    for key, label in (("zero_shot", "zero-shot (decomposed, no training)"), ("finetuned", "fine-tuned")):
        if key in a:
            out.append(f"| {label} | {_f(a[key]['map50_95'])} | {_f(a[key]['map50'])} |")
    if "note" in a:
        out.append(f"\n{a['note']}")
    out += ["", f"Wall time of the whole recipe: {_f(results.get('wall_seconds', 0) / 60, '.1f')} min on 2 CPU cores "
            f"(stated budget {results.get('expected_cpu_minutes', '?')} min).", "",
            f"Reproduce: `{results.get('command', '')}`", "",
            "## Citation", "", CITATIONS["arXiv:2511.11716"], ""]
    return "\n".join(out)


def default_variant(results: Mapping[str, Any]) -> str:
    """``<arch>_<budget>`` (``yolov5s_2x``): the name of a detect recipe's model when its card stage gives none."""
    return f"{results.get('arch', 'yolo').removesuffix('.yaml')}_{results.get('search', {}).get('budget', '2x')}"


def write_card(results: Mapping[str, Any], variant: str | None, tag: str, out_dir: Path) -> Path:
    """Write ``out_dir/<variant>.<tag>.md`` (variant defaults to ``<arch>_<budget>``)."""
    if variant is None:
        variant = default_variant(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{variant}.{tag}.md"
    path.write_text(detect_card(results, variant, tag))
    return path


def detect_results(results_dir: Path) -> dict[str, tuple[dict, str, str]]:
    """``{card name: (results, variant, tag)}`` for every detect recipe's results JSON in ``results_dir``.

    The variant and tag come from the recipe's ``card`` stage (``yolov5s_2x``, ``coco-mini``)."""
    found = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(results, dict) or results.get("task") != "detect":
            continue
        card = next((r.get("params", {}) for r in results.get("stages", []) if r.get("type") == "card"), {})
        variant = card.get("variant") or default_variant(results)
        tag = card.get("tag", "coco-mini")
        found[f"{variant}.{tag}"] = (results, variant, tag)
    return found


def detect_index_markdown(found: Mapping[str, tuple[Mapping[str, Any], str, str]]) -> str:
    """The detectors' rows for ``zoo_cards/README.md`` (empty when no detect recipe has run)."""
    if not found:
        return ""
    lines = ["## Detectors (YOLOv5, ultralytics' anchor-free 'u' builds)", "",
             "Trained from scratch on the 80 `coco-mini` train images (no COCO weights can be downloaded here), so "
             "mAP on the 79 val images is near zero and says nothing about COCO quality; agreement mAP50-95 "
             "scores the compressed model against the uncompressed one's boxes (fidelity).", "",
             "| model | params (M) | GMACs (320 px) | int8 flash (KiB) | params ratio | mAP50-95 base / compressed | "
             "agreement mAP50-95 (fine-tuned) | recipe |", "|---|---|---|---|---|---|---|---|"]
    for name, (r, _variant, _tag) in sorted(found.items()):
        b, c, a = r.get("base", {}), r.get("compressed", {}), r.get("agreement", {})
        if "params" not in c:
            lines.append(f"| [{name}]({name}.md) | not run |  |  |  |  |  | {r.get('command', '')} |")
            continue
        lines.append(f"| [{name}]({name}.md) | {c['params'] / 1e6:.3f} | {c['macs'] / 1e9:.3f} | "
                     f"{c['flash_bytes'] / 1024:.1f} | {c.get('params_ratio', 0):.2f}x | "
                     f"{_f(b.get('map50_95'))} / {_f(c.get('map50_95'))} | "
                     f"{_f(a.get('finetuned', {}).get('map50_95'))} | {r.get('command', '')} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="YOLO model card from a detect recipe's results JSON")
    p.add_argument("results", type=Path)
    p.add_argument("variant")
    p.add_argument("--tag", default="coco-mini")
    p.add_argument("--out", type=Path, default=Path("zoo_cards"))
    args = p.parse_args(argv)
    print(write_card(json.loads(args.results.read_text()), args.variant, args.tag, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
