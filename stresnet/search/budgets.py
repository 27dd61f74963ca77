"""Budget strings such as ``8x`` or ``8x, ram<=256KiB``.

A budget is one compression target that may mix several constraints, written
as comma-separated terms:

* ``8x`` / ``2.5x`` -- whole-model compression ratio on params
  (``params <= base_params / 8``);
* ``params<=1.5M`` (or ``params=1.5M``), ``macs<=0.5G`` -- counts, with
  optional K/M/G (1e3/1e6/1e9) suffix;
* ``flash<=512KiB``, ``ram<=256KiB`` -- bytes, with optional B, KB/MB/GB
  (powers of 1000) or KiB/MiB/GiB (powers of 1024) suffix;
* ``latency<=12ms`` -- batch-1 latency on the measured runtime, in ms (a unit is
  required: ms, us or s); the search needs a measured latency table for it;
* ``latency<=25%``, ``macs<=40%`` ... -- any metric as a share of the dense base's own
  cost (its latency predicted from the same table). A recipe that says "4x faster than
  its base" this way holds on any machine, where ``latency<=4.2ms`` holds on one.

Metric names and units are case-insensitive; whitespace is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Budget", "BudgetError", "parse_budget", "METRICS"]

_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_BYTE_UNITS = {
    "": 1.0, "b": 1.0,
    "kb": 1e3, "mb": 1e6, "gb": 1e9,
    "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3,
}
_TIME_UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3}  # limits in ms; no bare numbers (ms or s would be a guess)
METRICS: dict[str, dict[str, float]] = {
    "params": _COUNT_UNITS,
    "flash": _BYTE_UNITS,
    "macs": _COUNT_UNITS,
    "ram": _BYTE_UNITS,
    "latency": _TIME_UNITS,
}
_UNIT_SPELLING = {"k": "K", "m": "M", "g": "G", "b": "B", "kb": "KB", "mb": "MB", "gb": "GB",
                  "kib": "KiB", "mib": "MiB", "gib": "GiB", "ms": "ms", "us": "us", "s": "s", "": ""}

_NUM = r"(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)"
_RATIO_RE = re.compile(rf"^{_NUM}x$", re.IGNORECASE)
_METRIC_RE = re.compile(rf"^(?P<metric>[a-z_]+)(?:<=|=){_NUM}(?P<unit>[a-z]*|%)$", re.IGNORECASE)
_EXAMPLES = "expected e.g. 8x, params<=1.5M, flash<=512KiB, macs<=0.5G, ram<=256KiB, latency<=12ms, latency<=25%"


class BudgetError(ValueError):
    """A budget string that cannot be parsed or applied (one-line message naming the term)."""


@dataclass(frozen=True)
class _Term:
    metric: str | None  # None for a compression ratio
    value: float        # ratio, the limit in base units (count / bytes / ms), or a share of the base's cost
    label: str          # filename-safe spelling, e.g. "8x", "ram256KiB" or "latency25pct"
    relative: bool = False  # value is a share of the base's cost (``latency<=25%``)


@dataclass(frozen=True)
class Budget:
    """A parsed budget: an optional params ratio, absolute limits, and limits relative to the base's cost."""

    text: str
    ratio: float | None
    absolute: Mapping[str, float]
    relative: Mapping[str, float] = field(default_factory=dict)  # metric -> share of the base's cost (0.25 = 25%)

    @property
    def metrics(self) -> set[str]:
        """Every metric this budget limits besides the params ratio."""
        return {*self.absolute, *self.relative}

    def limits(self, base_cost: Mapping[str, float]) -> dict[str, float]:
        """Absolute limits for a model of cost ``base_cost`` (ratio -> params limit, ``%`` -> share of the
        base's cost; tighter wins)."""
        out = {k: float(v) for k, v in self.absolute.items()}
        for metric, share in self.relative.items():
            if metric not in base_cost:
                raise BudgetError(f"budget {self.text!r}: {metric}<={100 * share:g}% needs the base's {metric}"
                                  + (" (a measured latency table)" if metric == "latency" else ""))
            out[metric] = float(base_cost[metric]) * share
        if self.ratio is not None:
            if "params" not in base_cost:
                raise BudgetError(f"budget {self.text!r}: a ratio needs base_cost['params']")
            by_ratio = float(base_cost["params"]) / self.ratio
            out["params"] = min(out.get("params", by_ratio), by_ratio)
        return out

    @property
    def label(self) -> str:
        """Filename-safe short name independent of term order, e.g. ``8x_ram256KiB``."""
        terms = _parse_terms(self.text)
        order = {None: 0, **{m: i + 1 for i, m in enumerate(METRICS)}}
        return "_".join(t.label for t in sorted(terms, key=lambda t: order[t.metric]))


def _fmt_num(text: str) -> str:
    """Short filename-safe spelling of a number ("2.50" -> "2.5", "1e6" -> "1000000")."""
    out = f"{float(text):.6f}".rstrip("0").rstrip(".")
    return out or "0"


def _parse_term(budget: str, term: str) -> _Term:
    def fail(why: str) -> BudgetError:
        return BudgetError(f"budget {budget!r}: {why}")

    if not term:
        raise fail(f"empty term ({_EXAMPLES})")
    m = _RATIO_RE.match(term)
    if m:
        ratio = float(m["num"])
        if ratio <= 0:
            raise fail(f"ratio in term {term!r} must be > 0")
        return _Term(None, ratio, f"{_fmt_num(m['num'])}x")
    m = _METRIC_RE.match(term)
    if not m:
        raise fail(f"cannot parse term {term!r} ({_EXAMPLES})")
    metric, unit = m["metric"].lower(), m["unit"].lower()
    if metric not in METRICS:
        raise fail(f"unknown metric {m['metric']!r} in term {term!r} (known: {', '.join(METRICS)})")
    if unit == "%":
        share = float(m["num"]) / 100
        if not 0 < share <= 1:
            raise fail(f"share in term {term!r} must be above 0% and at most 100%")
        return _Term(metric, share, f"{metric}{_fmt_num(m['num'])}pct", relative=True)
    units = METRICS[metric]
    if unit not in units:
        allowed = ", ".join(_UNIT_SPELLING[u] for u in units if u)
        what = f"unknown unit {m['unit']!r}" if unit else "no unit"
        raise fail(f"{what} for {metric} in term {term!r} (use {allowed})")
    value = float(m["num"]) * units[unit]
    if value <= 0:
        raise fail(f"limit in term {term!r} must be > 0")
    return _Term(metric, value, f"{metric}{_fmt_num(m['num'])}{_UNIT_SPELLING[unit]}")


def _parse_terms(text: str) -> list[_Term]:
    if not text or not text.strip():
        raise BudgetError(f"budget {text!r}: empty budget ({_EXAMPLES})")
    terms = [_parse_term(text, re.sub(r"\s+", "", t)) for t in text.split(",")]
    seen: set[str | None] = set()
    for t in terms:
        if t.metric in seen:
            what = "ratio" if t.metric is None else t.metric
            raise BudgetError(f"budget {text!r}: {what} given more than once")
        seen.add(t.metric)
    return terms


def parse_budget(text: str) -> Budget:
    """Parse ``"8x"``, ``"params<=1.5M"``, ``"8x, ram<=256KiB"``, ``"8x, latency<=25%"`` ...; ValueError names the
    bad term."""
    terms = _parse_terms(text)
    ratio = next((t.value for t in terms if t.metric is None), None)
    absolute = {t.metric: t.value for t in terms if t.metric is not None and not t.relative}
    relative = {t.metric: t.value for t in terms if t.metric is not None and t.relative}
    return Budget(text=text, ratio=ratio, absolute=absolute, relative=relative)
