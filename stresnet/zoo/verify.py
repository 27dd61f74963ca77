"""Check published weights the way users meet them: a fresh offline process, timm and torch.hub, top-1 vs the card.

For each published ``arch.tag`` a new Python process with ``HF_HUB_OFFLINE=1``
builds the model with ``timm.create_model(name, pretrained=True)`` and with
``torch.hub.load(<repo>, arch, source='local', pretrained=True, tag=tag)``,
checks that both hold the same tensors, and measures top-1 on ``val`` (1000-way on the
``ILSVRC2012_val_*`` files of ``val``'s parent for a tag scored there, such as ``.kd_imagenette``). The
number must equal the one recorded at publish time (the card quotes it).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys, torch, timm
import stresnet
from stresnet.evaluate import accuracy
from stresnet.zoo.models import zoo_tag
name, repo, val = sys.argv[1:4]
arch, _, tag = name.partition(".")
model = timm.create_model(name, pretrained=True).eval()
hub = torch.hub.load(repo, arch, source="local", pretrained=True, tag=tag).eval()
a, b = model.state_dict(), hub.state_dict()
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
if zoo_tag(name).evaluated_on == "ilsvrc-val":  # 1000-way on the ImageNet-val files of train/ and val/
    from pathlib import Path
    from stresnet.imagenet.evaluate import data_config, imagenet_accuracy
    from stresnet.imagenet.split import imagenet_val_samples
    acc = imagenet_accuracy(model, imagenet_val_samples(Path(val).parent), data_config(model))
else:
    acc = accuracy(model, val, model.pretrained_cfg["input_size"][-1])
print(json.dumps({"top1": acc["top1"], "images": acc["images"], "hub_equals_timm": same}))
"""


def card_top1(card: Path) -> float | None:
    """The top-1 (percent) in a card's model-index front matter, or None."""
    if not card.is_file():
        return None
    m = re.search(r"name: top-1\n\s+value: ([0-9.]+)", card.read_text())
    return float(m.group(1)) if m else None


def verify_published(val: Path, names: list[str] | None = None, cards: Path | None = None,
                     repo: Path = REPO) -> list[dict[str, Any]]:
    """One row per published name: measured top-1 in a fresh offline process vs the registry and the card."""
    from .models import weights_registry

    registry = weights_registry()
    cards = cards or repo / "zoo_cards"
    rows = []
    for name in names or sorted(registry):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
        proc = subprocess.run([sys.executable, "-c", _CHILD, name, str(repo), str(val)], capture_output=True,
                              text=True, env=env)
        row: dict[str, Any] = {"name": name, "registry_top1": registry.get(name, {}).get("metrics", {}).get("top1"),
                               "card_top1_percent": card_top1(cards / f"{name}.md")}
        if proc.returncode != 0:
            row["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        else:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            row["equals_registry"] = row["top1"] == row["registry_top1"]
            row["equals_card"] = (row["card_top1_percent"] is not None
                                  and f"{100 * row['top1']:.2f}" == f"{row['card_top1_percent']:.2f}")
        rows.append(row)
    return rows
