"""Budget strings: forms, units, tighter-of ratio/params, labels, errors."""

from __future__ import annotations

import pytest

from stresnet.search.budgets import Budget, parse_budget


@pytest.mark.parametrize(
    ("text", "ratio"),
    [("8x", 8.0), ("2.5x", 2.5), (" 8 X ", 8.0), ("0.5x", 0.5), (".5x", 0.5)],
)
def test_ratio(text, ratio):
    b = parse_budget(text)
    assert b.ratio == ratio and dict(b.absolute) == {}
    assert b.limits({"params": 1_000_000}) == {"params": pytest.approx(1_000_000 / ratio)}


@pytest.mark.parametrize(
    ("text", "metric", "value"),
    [
        ("params<=1.5M", "params", 1.5e6),
        ("params=1.5M", "params", 1.5e6),
        ("PARAMS <= 1500k", "params", 1.5e6),
        ("params<=2000", "params", 2000.0),
        ("macs<=0.5G", "macs", 0.5e9),
        ("macs<=300m", "macs", 3e8),
        ("flash<=512KiB", "flash", 512 * 1024.0),
        ("flash<=512KB", "flash", 512_000.0),
        ("flash<=1MiB", "flash", 1024.0**2),
        ("flash<=2MB", "flash", 2e6),
        ("flash<=1000B", "flash", 1000.0),
        ("flash<=1000", "flash", 1000.0),
        ("ram<=256KiB", "ram", 262_144.0),
        ("Ram <= 256 kib", "ram", 262_144.0),
    ],
)
def test_absolute_terms_and_units(text, metric, value):
    b = parse_budget(text)
    assert b.ratio is None
    assert dict(b.absolute) == {metric: pytest.approx(value)}
    assert b.limits({"params": 1.0}) == {metric: pytest.approx(value)}


def test_mixed_budget_keeps_every_term():
    b = parse_budget("8x, ram<=256KiB, flash<=1MiB, macs<=1G")
    assert isinstance(b, Budget) and b.text == "8x, ram<=256KiB, flash<=1MiB, macs<=1G"
    assert b.limits({"params": 8e6, "ram": 1e9}) == {
        "params": pytest.approx(1e6),
        "ram": 262_144.0,
        "flash": 1024.0**2,
        "macs": 1e9,
    }


def test_ratio_and_params_take_the_tighter():
    b = parse_budget("8x, params<=2M")
    assert b.limits({"params": 8e6})["params"] == pytest.approx(1e6)  # ratio is tighter
    assert b.limits({"params": 32e6})["params"] == pytest.approx(2e6)  # params<= is tighter


def test_ratio_needs_base_params():
    with pytest.raises(ValueError, match="params"):
        parse_budget("8x").limits({"flash": 1.0})


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("8x", "8x"),
        ("2.50x", "2.5x"),
        ("8x, ram<=256KiB", "8x_ram256KiB"),
        ("ram <= 256 kib , 8X", "8x_ram256KiB"),
        ("params<=1.5M", "params1.5M"),
        ("macs<=0.5g,flash<=512KB", "flash512KB_macs0.5G"),
    ],
)
def test_labels_are_short_canonical_and_filename_safe(text, label):
    out = parse_budget(text).label
    assert out == label
    assert all(c.isalnum() or c in "._-" for c in out)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("8y", "cannot parse term '8y'"),
        ("8x, 4 y", "cannot parse term '4y'"),
        ("params>=1M", "cannot parse term 'params>=1M'"),
        ("weights<=1M", "unknown metric 'weights'"),
        ("ram<=256M", "unknown unit 'M'"),
        ("params<=1MiB", "unknown unit 'MiB'"),
        ("0x", "'0x' must be > 0"),
        ("-2x", "'-2x' must be > 0"),
        ("params<=0", "'params<=0' must be > 0"),
        ("8x,", "empty term"),
        ("", "empty budget"),
        ("8x, 4x", "ratio given more than once"),
        ("ram<=1KiB, ram<=2KiB", "ram given more than once"),
    ],
)
def test_errors_name_the_offending_term(text, fragment):
    with pytest.raises(ValueError) as err:
        parse_budget(text)
    msg = str(err.value)
    assert fragment in msg
    assert msg.startswith(f"budget {text!r}:") and "\n" not in msg


def test_unparseable_term_error_lists_examples():
    with pytest.raises(ValueError, match=r"expected e\.g\. 8x, params<=1\.5M"):
        parse_budget("8y")
