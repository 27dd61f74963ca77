"""Every `stresnet` command and nested subcommand answers --help with exit 0 and lists its own options."""
from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys

import pytest

from stresnet.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(argv prefix, parser)`` for every subparser reachable from ``parser``, found by walking it."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(((*path, name), sub))
                out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(build_parser())


def _own_options(parser: argparse.ArgumentParser) -> list[str]:
    """The long option strings of ``parser`` other than --help (what its help must show)."""
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]


def test_the_walk_finds_the_commands() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"finetune", "admm", "lrs", "bench latency", "bench int8", "recipe run"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_exits_0_and_lists_the_options(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*path, "--help"])
    assert exc.value.code == 0
    text = out.getvalue()
    assert text.startswith(f"usage: stresnet {' '.join(path)}")
    options = _own_options(parser)
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        assert options, f"stresnet {' '.join(path)} has no options of its own"
    assert all(o in text for o in options), [o for o in options if o not in text]


def test_finetune_help_lists_every_training_option() -> None:
    """The training options come from TrainConfig itself: a field is an option of every command that trains."""
    from dataclasses import fields

    from stresnet.train.config import TrainConfig

    flags = {"--" + f.name.replace("_", "-") for f in fields(TrainConfig)}
    by_name = dict((" ".join(p), sub) for p, sub in COMMANDS)
    assert flags <= set(_own_options(by_name["finetune"]))
    assert flags - {"--input-size"} <= set(_own_options(by_name["admm"])) & set(_own_options(by_name["lrs"]))


def test_python_m_stresnet_finetune_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "stresnet", "finetune", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--kd-alpha" in proc.stdout and "--max-steps-per-epoch" in proc.stdout and "--train" in proc.stdout


def test_parsed_training_options_build_the_train_config() -> None:
    from stresnet.train.engine import finetune_config

    args = build_parser().parse_args(["finetune", "--train", "t", "--val", "v", "--out", "o", "--model", "resnet18",
                                      "--max-steps-per-epoch", "3", "--kd-T", "2.5", "--channels-last", "--no-amp",
                                      "--optimizer", "adamw"])
    cfg = finetune_config(args)
    assert (cfg.max_steps_per_epoch, cfg.kd_T, cfg.channels_last, cfg.amp, cfg.optimizer) == (3, 2.5, True, False, "adamw")
    assert cfg.epochs == 10 and cfg.sync_bn is False  # untouched fields keep TrainConfig's defaults
    with pytest.raises(ValueError, match="kd_alpha"):
        finetune_config(build_parser().parse_args(["finetune", "--train", "t", "--val", "v", "--out", "o",
                                                   "--model", "m", "--kd-alpha", "2"]))


def test_method_commands_pass_their_training_options_to_the_stages() -> None:
    from stresnet.cli import _train_fields

    args = build_parser().parse_args(["admm", "--checkpoint", "c", "--data", "d", "--plan", "p", "--out", "o",
                                      "--batch-size", "8", "--label-smoothing", "0", "--finetune-epochs", "3"])
    assert _train_fields(args) == {"epochs": 1, "warmup_epochs": 0.2, "channels_last": True, "batch_size": 8,
                                   "label_smoothing": 0.0}
    assert _train_fields(args, epochs=args.finetune_epochs)["epochs"] == 3
