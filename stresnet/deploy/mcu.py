"""int8 flash and peak activation RAM of models at several resolutions, against microcontroller budgets."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from .tables import text_table

__all__ = ["mcu_report", "format_mcu"]


def mcu_report(
    models: Mapping[str, nn.Module],
    resolutions: Sequence[int] = (224, 128),
    flash_budgets_kib: Sequence[float] = (1024, 2048),
    ram_budgets_kib: Sequence[float] = (512, 1024),
    in_chans: int = 3,
) -> dict[str, Any]:
    """int8 flash and peak activation RAM of each model at each resolution (``cost.profile``), against budgets.

    One row per (model, resolution) with ``params``, ``macs``, ``flash_bytes``,
    ``peak_ram_bytes`` (``cost.profile``'s numbers), ``flash_kib`` /
    ``peak_ram_kib``, ``flash_fits`` / ``ram_fits`` = ``{budget KiB: bytes <=
    budget * 1024}`` and ``fits`` = ``{"<flash>/<ram>": both fit}`` for every
    pair of budgets.
    """
    from ..cost import profile

    rows = []
    for name, model in models.items():
        for res in resolutions:
            p = profile(model, (in_chans, int(res), int(res)))
            flash_fits = {b: p.flash_bytes <= b * 1024 for b in flash_budgets_kib}
            ram_fits = {b: p.peak_ram_bytes <= b * 1024 for b in ram_budgets_kib}
            rows.append({
                "model": name,
                "resolution": int(res),
                "params": p.params,
                "macs": p.macs,
                "flash_bytes": p.flash_bytes,
                "peak_ram_bytes": p.peak_ram_bytes,
                "flash_kib": p.flash_bytes / 1024,
                "peak_ram_kib": p.peak_ram_bytes / 1024,
                "peak_ram_at": p.peak_ram_at,
                "flash_fits": flash_fits,
                "ram_fits": ram_fits,
                "fits": {f"{_kib(f)}/{_kib(r)}": flash_fits[f] and ram_fits[r]
                         for f in flash_budgets_kib for r in ram_budgets_kib},
            })
    return {
        "resolutions": [int(r) for r in resolutions],
        "flash_budgets_kib": list(flash_budgets_kib),
        "ram_budgets_kib": list(ram_budgets_kib),
        "rows": rows,
    }


def _kib(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def format_mcu(result: Mapping[str, Any]) -> str:
    """A text table: per (model, resolution) int8 flash KiB, peak RAM KiB and yes/no per flash and RAM budget."""
    fb, rb = result["flash_budgets_kib"], result["ram_budgets_kib"]
    header = (["model", "res", "params (M)", "GMACs", "flash KiB", "peak RAM KiB"]
              + [f"flash<={_kib(b)}K" for b in fb] + [f"RAM<={_kib(b)}K" for b in rb])
    yes = {True: "yes", False: "no"}
    rows = [
        [r["model"], str(r["resolution"]), f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.3f}",
         f"{r['flash_kib']:,.1f}", f"{r['peak_ram_kib']:,.1f}"]
        + [yes[r["flash_fits"][b]] for b in fb] + [yes[r["ram_fits"][b]] for b in rb]
        for r in result["rows"]
    ]
    note = ("int8 deployment budget (stresnet.cost rules: folded BN, int8 weights + int32 bias/scale per channel; "
            "peak = live int8 activations at batch 1)")
    return "\n".join([note, *text_table(header, rows)])
