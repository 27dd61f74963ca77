"""Plain-text tables for the benchmark reports (first column left-aligned, the rest right-aligned)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["text_table"]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a table: header, a dashed rule, then one line per row, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
