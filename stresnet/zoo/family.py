"""The STResNet MCU family (pico ... tiny) as rank plans over timm ``resnet18``.

Transcribed from the rank table of the STResNet paper (``shared/specs/papers.md`` §2):
every decomposed conv is Tucker-2 with the same rank on both channel modes, the
stem is ``1x1 (3->3)`` -> ``7x7/2 (3->r)`` -> ``1x1 (r->C_stem)``, and all but
tiny narrow the stem to 32 channels with a 1x1 projection back to 64 after the
max-pool. ``"F"`` leaves a conv full; downsample convs without a rank stay full.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Union

from ..plan import Plan

if TYPE_CHECKING:
    from ..cost import Profile

Rank = Union[int, str]  # an int rank or "F" (full)

# variant: (stem rank, stem width, {stage: [(conv1, conv2, ds?) for block 0, block 1]})
RANK_TABLE: dict[str, tuple[int, int, dict[int, list[tuple]]]] = {
    "tiny": (16, 64, {1: [("F", "F"), ("F", "F")], 2: [("F", 96), ("F", 80)],
                      3: [("F", 192), ("F", 96)], 4: [(208, 88), (192, 112)]}),
    "milli": (16, 32, {1: [("F", "F"), ("F", "F")], 2: [("F", 96), ("F", 72)],
                       3: [("F", 120), (168, 72)], 4: [(160, 72, 48), (168, 96)]}),
    "micro": (8, 32, {1: [("F", "F"), ("F", "F")], 2: [("F", 40), (88, 32)],
                      3: [(88, 72, 16), (80, 32)], 4: [(80, 8, 24), (72, 64)]}),
    "nano": (8, 32, {1: [("F", 32), ("F", 40)], 2: [("F", 32), (64, 16)],
                     3: [(48, 16, 8), (48, 8)], 4: [(32, 8, 8), (48, 8)]}),
    "pico": (8, 32, {1: [(24, 16), (24, 8)], 2: [(24, 8, 8), (8, 8)],
                     3: [(8, 8, 8), (8, 8)], 4: [(8, 8, 8), (8, 8)]}),
}
VARIANTS = tuple(RANK_TABLE)


def _tucker(rank: int, c_in_limit: int | None = None) -> dict:
    r_in = rank if c_in_limit is None else min(rank, c_in_limit)
    return {"type": "tucker2", "ranks": [rank, r_in]}


def family_plan(variant: str, num_classes: int = 1000) -> Plan:
    """The plan of one STResNet variant (``pico``, ``nano``, ``micro``, ``milli``, ``tiny``)."""
    if variant not in RANK_TABLE:
        raise ValueError(f"unknown STResNet variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    stem_rank, stem_width, stages = RANK_TABLE[variant]
    layers: dict[str, dict] = {"conv1": _tucker(stem_rank, c_in_limit=3)}
    for stage, blocks in stages.items():
        for b, ranks in enumerate(blocks):
            prefix = f"layer{stage}.{b}"
            for conv, r in zip(("conv1", "conv2", "downsample.0"), ranks):
                if r != "F":
                    layers[f"{prefix}.{conv}"] = _tucker(int(r))
    surgery = {"stem": {"width": stem_width, "proj": True}} if stem_width != 64 else {}
    return Plan(
        layers=layers,
        base={"arch": "resnet18", "num_classes": num_classes},
        surgery=surgery,
        meta={"name": f"stresnet_{variant}", "source": "STResNet rank table (arXiv 2601.05364)"},
    )


BUDGET_METRICS = ("params", "flash", "macs", "ram")


def st_budget(variant: str, num_classes: int, input_size: int = 224) -> dict[str, int]:
    """The four MCU budgets of an ST variant, carried to a ``num_classes`` model.

    ``stresnet profile`` of ST's own architecture (the paper's ranks and stem) at
    ``input_size`` px, built with a ``num_classes`` head: the backbone's budgets
    are ST's, and the classifier is the one the task needs (so at 1000 classes
    these are ST's budgets exactly, and a model within the ``num_classes`` budgets
    is within ST's once both take the same 1000-class head).
    """
    return _st_profile(variant, num_classes, input_size).budget_costs()


@lru_cache(maxsize=None)
def _st_profile(variant: str, num_classes: int, input_size: int) -> Profile:
    """ST's ``variant`` profiled once per process: the report asks for each variant's budgets on every card and
    section (a frozen :class:`~stresnet.cost.Profile`; ``budget_costs`` gives each caller a dict of its own)."""
    from ..cost import profile
    from ..plan import build

    return profile(build(family_plan(variant, num_classes=num_classes)), (3, input_size, input_size))


def st_budget_text(variant: str, num_classes: int, input_size: int = 224) -> str:
    """:func:`st_budget` as a budget string for the search (``params<=...,flash<=...B,macs<=...,ram<=...B``)."""
    b = st_budget(variant, num_classes, input_size)
    return f"params<={b['params']},flash<={b['flash']}B,macs<={b['macs']},ram<={b['ram']}B"
