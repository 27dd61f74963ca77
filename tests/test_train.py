"""KD fine-tuning engine: loss, files, resume equivalence, kill -9 robustness, torchrun DDP on CPU.

Everything runs on a tiny ImageFolder (3 classes x 12 train / 4 val random
40x40 PNGs) with timm's ``test_*`` models at 32 px, one torch thread.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stresnet.train import kd_loss
from stresnet.train.data import TrainLoader
from stresnet.train.engine import TrainConfig, build_models, finetune

REPO = Path(__file__).resolve().parents[1]
CLASSES, N_TRAIN, N_VAL = 3, 12, 4
# small but non-trivial: 36 train images -> 4 updates of 8 per epoch
BASE = dict(batch_size=8, input_size=32, lr=0.02, warmup_epochs=0.5, seed=3, workers=0, log_every=100)


def _no_time(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("STRESNET_TRAIN_STEP_SLEEP", None)
    return env


def _cli_args(tree: Path, out: Path, model: str, epochs: int, batch_size: int = 8, **extra) -> list[str]:
    cfg = {**BASE, "batch_size": batch_size, **extra}
    args = ["--train", str(tree / "train"), "--val", str(tree / "val"), "--out", str(out), "--model", model,
            "--num-classes", str(CLASSES), "--epochs", str(epochs), "--no-progress"]
    for k, v in cfg.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: one torch thread


# ----------------------------------------------------------------------------- (1) loss

def test_kd_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    y = torch.tensor([0, 3, 1, 2, 3])
    T, alpha, eps = 2.5, 0.3, 0.1

    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    logp = torch.log_softmax(s, 1)
    ce = ((1 - eps) * -logp[torch.arange(5), y] + eps * -logp.mean(1)).mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    torch.testing.assert_close(kd_loss(s, t, y, T=T, alpha=alpha, label_smoothing=eps), expected)

    ce_only = F.cross_entropy(s, y, label_smoothing=eps)
    torch.testing.assert_close(kd_loss(s, t, y, T=T, alpha=0.0, label_smoothing=eps), ce_only)
    torch.testing.assert_close(kd_loss(s, None, y, label_smoothing=eps), ce_only)
    # a student equal to its teacher has no KD term
    torch.testing.assert_close(kd_loss(s, s, y, T=T, alpha=1.0), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert kd_loss(s.half(), t.half(), y).dtype == torch.float32


def test_train_data_depends_on_seed_and_epoch_only(tree):
    a = TrainLoader(tree / "train", 32, 8, seed=5, workers=0)
    b = TrainLoader(tree / "train", 32, 8, seed=5, workers=1)
    assert len(a) == 4
    xa, ya = next(iter(a.epoch(1)))
    torch.manual_seed(99)  # the global RNG plays no part
    xb, yb = next(iter(b.epoch(1)))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x0, _ = next(iter(a.epoch(0)))
    assert not torch.equal(x0, xa)


def test_training_on_fit_leaves_the_selection_split_out_and_scores_it(tree, tmp_path):
    """``train_on="fit"``: the epochs never show a selection image, and every evaluation scores the selection split
    (the top-1 a hyper-parameter is chosen on) next to val."""
    from stresnet.data import selection_images, split_indices, sample_names
    from torchvision.datasets import ImageFolder

    names = sample_names(ImageFolder(str(tree / "train")))
    held_out = {names[i][0] for i in split_indices(names)["selection"]}
    loader = TrainLoader(tree / "train", 32, 8, workers=0, part="fit")
    seen = {loader.folder.dataset.samples[i][0] for i in loader.folder.indices}
    assert seen and not seen & held_out and len(seen) + len(held_out) == len(names)

    student, teacher = _dropout_resnet(0)
    summary = finetune(student, teacher.eval(), tree / "train", tree / "val", tmp_path,
                       TrainConfig(epochs=1, train_on="fit", **BASE), progress=False)
    row, = _lines(tmp_path / "metrics.jsonl")
    x, y = selection_images(tree / "train", 32)
    with torch.no_grad():
        expected = (student.eval()(x).argmax(1) == y).float().mean().item()
    assert row["selection_top1"] == pytest.approx(expected) == summary["selection_top1"]
    assert summary["metrics"][0]["epoch"] == 1 and len(x) == len(held_out)


# ----------------------------------------------------------------------------- (2), (3) files and resume

def _dropout_resnet(seed: int):
    import timm

    torch.manual_seed(seed)  # dropout makes the run consume the global RNG, so resume must restore it
    base = timm.create_model("test_resnet", num_classes=CLASSES, drop_rate=0.3)
    return copy.deepcopy(base), base.eval()


@pytest.fixture(scope="module")
def run2(tree, tmp_path_factory):
    """An uninterrupted 2-epoch run (default: one loader worker)."""
    out = tmp_path_factory.mktemp("run2")
    student, teacher = _dropout_resnet(0)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    summary = finetune(student, teacher, tree / "train", tree / "val", out,
                       TrainConfig(epochs=2, **{**BASE, "workers": 1}), progress=False)
    return out, summary, student.state_dict(), init, torch.rand(3)


def test_finetune_writes_metrics_checkpoint_and_weights(run2):
    out, summary, state, init, _ = run2
    rows = _lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "lr", "val_top1", "val_top5", "seconds"}
    assert all(0 <= r["val_top1"] <= r["val_top5"] <= 1 and np.isfinite(r["train_loss"]) for r in rows)
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine decay, stepped per update
    assert summary["epochs"] == 2 and summary["finished"]
    assert summary["val_top1"] == rows[-1]["val_top1"] and summary["val_top5"] == rows[-1]["val_top5"]
    assert _no_time(summary["metrics"]) == _no_time(rows)

    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["metrics"]) == 2
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(ckpt)
    saved = _load(out / "model.safetensors")
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) and torch.equal(ckpt["model"][k], state[k]) for k in state)
    assert not (out / "last.pt.tmp").exists() and not (out / "model.safetensors.tmp").exists()
    assert any(not torch.equal(init[k], state[k]) for k in state)  # it trained


def test_resume_matches_uninterrupted_run(run2, tree, tmp_path):
    _, ref, ref_state, _, ref_rand = run2
    cfg = TrainConfig(epochs=2, **BASE)
    student, teacher = _dropout_resnet(0)
    first = finetune(student, teacher, tree / "train", tree / "val", tmp_path, cfg, progress=False,
                     stop_after_epoch=1)
    assert first["epochs"] == 1 and not first["finished"]
    assert len(_lines(tmp_path / "metrics.jsonl")) == 1 and not (tmp_path / "model.safetensors").exists()

    # a new process would start from other weights and another RNG state: both must come from last.pt
    student, teacher = _dropout_resnet(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    torch.manual_seed(1234)
    summary = finetune(student, teacher, tree / "train", tree / "val", tmp_path, cfg, resume=True, progress=False)
    assert torch.equal(torch.rand(3), ref_rand)  # RNG state after training matches too
    state = student.state_dict()
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert _no_time(summary["metrics"]) == _no_time(ref["metrics"])
    assert _no_time(_lines(tmp_path / "metrics.jsonl")) == _no_time(ref["metrics"])
    saved = _load(tmp_path / "model.safetensors")
    assert all(torch.equal(saved[k], ref_state[k]) for k in ref_state)


# ----------------------------------------------------------------------------- (4) kill -9

def test_kill9_then_resume_loses_no_finished_epoch(tree, tmp_path):
    epochs = 3
    ref_out = tmp_path / "ref"
    student, teacher = build_models("test_resnet", CLASSES, seed=BASE["seed"])
    ref = finetune(student, teacher, tree / "train", tree / "val", ref_out, TrainConfig(epochs=epochs, **BASE),
                   progress=False)
    ref_state = student.state_dict()

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "stresnet.train.engine", *_cli_args(tree, out, "test_resnet", epochs)]
    env = _env()
    # each update sleeps, so the kill lands inside epoch 2 (after epoch 1's checkpoint)
    proc = subprocess.Popen(cmd, env={**env, "STRESNET_TRAIN_STEP_SLEEP": "0.4"}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < epochs
    assert not (out / "model.safetensors").exists()
    assert [r["epoch"] for r in _lines(out / "metrics.jsonl")] == list(range(1, done + 1))
    # a kill between appending epoch done+1's metrics line and replacing last.pt leaves an orphan row
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": done + 1, "train_loss": 0.0, "lr": 0.0, "val_top1": 0.0, "val_top5": 0.0,
                            "seconds": 0.0}) + "\n")

    res = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {out / 'last.pt'} at epoch {done}/{epochs}" in res.stderr
    rows = _lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert _no_time(rows) == _no_time(ref["metrics"])
    saved = _load(out / "model.safetensors")
    assert saved.keys() == ref_state.keys()
    assert all(torch.equal(saved[k], ref_state[k]) for k in ref_state)


# ----------------------------------------------------------------------------- (5) torchrun

def test_torchrun_two_processes_match_single_process(tree, tmp_path):
    """2 CPU processes (gloo) x batch 4 vs 1 process x batch 8, one epoch of 4 updates.

    Comparable by construction: the DistributedSampler gives rank r the
    images order[r::2] of the same seeded order, augmentations are seeded per
    (seed, epoch, image), DDP averages the two half-batch gradients (= the
    full-batch gradient), and the model (test_efficientnet_gn) has GroupNorm,
    not BatchNorm, so no statistic depends on how the batch is split. What is
    left is float summation order: weights agree to ~1e-5 (tolerance: 1e-3
    of the update's size), accuracies to within one validation image.
    """
    model, cfg = "test_efficientnet_gn", {**BASE, "lr": 0.01, "warmup_epochs": 0}
    student, teacher = build_models(model, CLASSES, seed=cfg["seed"])
    init = {k: v.clone() for k, v in student.state_dict().items()}
    single = finetune(student, teacher, tree / "train", tree / "val", tmp_path / "single",
                      TrainConfig(epochs=1, **cfg), progress=False)
    one = student.state_dict()

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "stresnet.train.engine", *_cli_args(tree, out, model, 1, batch_size=4, lr=0.01, warmup_epochs=0)]
    res = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    rows = _lines(out / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["lr"] == pytest.approx(single["metrics"][0]["lr"])
    assert abs(rows[0]["val_top1"] - single["val_top1"]) <= 1 / (CLASSES * N_VAL) + 1e-9
    assert abs(rows[0]["val_top5"] - single["val_top5"]) <= 1 / (CLASSES * N_VAL) + 1e-9
    assert rows[0]["train_loss"] == pytest.approx(single["metrics"][0]["train_loss"], rel=1e-4)

    two = _load(out / "model.safetensors")
    keys = [k for k in one if one[k].is_floating_point()]
    diff = max((two[k] - one[k]).abs().max().item() for k in keys)
    moved = max((one[k] - init[k]).abs().max().item() for k in keys)
    assert moved > 1e-3  # the epoch really changed the weights...
    assert diff <= 1e-3 * moved + 1e-6, (diff, moved)  # ...and both runs changed them the same way


def test_frozen_bn_keeps_the_running_statistics_and_still_learns_scale_and_shift(tree, tmp_path):
    """``bn="frozen"``: a decomposed start keeps its base's BN statistics (re-estimating them costs accuracy), while
    every BN's affine parameters and the convs still train; the default re-estimates them."""
    from torch import nn

    runs = {}
    for mode in ("frozen", "train"):
        student, teacher = _dropout_resnet(0)
        before = copy.deepcopy(student.state_dict())
        finetune(student, teacher, tree / "train", tree / "val", tmp_path / mode,
                 TrainConfig(epochs=1, bn=mode, **BASE), progress=False)
        runs[mode] = (before, student.state_dict(), student)
    before, after, student = runs["frozen"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    affine = [f"{n}.weight" for n, m in student.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in affine)
    before, after, _ = runs["train"]
    assert any(not torch.equal(before[k], after[k]) for k in stats)
    with pytest.raises(ValueError, match="TrainConfig.bn must be one of train, frozen"):
        TrainConfig(bn="off")


def test_mixup_shows_teacher_and_student_the_same_mixed_images(tree, tmp_path):
    """``mixup``: a distillation on few classes matches the teacher between them too, so both models must see one
    and the same mixed batch; without it they see the loader's images."""
    from torch import nn

    class Recorder(nn.Module):
        def __init__(self, inner: nn.Module, seen: list, always: bool) -> None:
            super().__init__()
            self.inner, self.seen, self.always = inner, seen, always

        def forward(self, x):
            if self.always or self.training:  # the student's training forwards; every teacher forward
                self.seen.append(x.detach().clone())
            return self.inner(x)

    batches = {}
    for alpha in (0.0, 1.0):
        student, teacher = _dropout_resnet(0)
        seen_s, seen_t = [], []
        finetune(Recorder(student, seen_s, False), Recorder(teacher, seen_t, True), tree / "train", tree / "val",
                 tmp_path / str(alpha), TrainConfig(epochs=1, mixup=alpha, **BASE), progress=False)
        assert len(seen_s) == len(seen_t) == 4  # the epoch's 4 updates
        assert all(torch.equal(a, b) for a, b in zip(seen_s, seen_t))
        batches[alpha] = seen_s
    assert not any(torch.equal(a, b) for a, b in zip(batches[0.0], batches[1.0]))  # mixed, not the loader's
    with pytest.raises(ValueError, match="TrainConfig.mixup must be >= 0"):
        TrainConfig(mixup=-1.0)
    with pytest.raises(ValueError, match="TrainConfig.mixup needs an even batch_size, got 7"):
        TrainConfig(mixup=1.0, batch_size=7)  # never a silent run without mixing


def test_channels_last_is_refused_on_cpu_for_a_strided_1x1_conv_with_few_input_channels():
    """oneDNN#6035: a strided 1x1 conv with fewer than 8 input channels hangs, crashes or gets wrong weight
    gradients in the CPU channels-last kernel. Tucker-2 makes one from a downsample conv at input rank 4 (the 32x
    uniform plan does), so such a model trains contiguous on CPU, with the layer named; rank 8 and CUDA keep
    channels-last."""
    import timm

    from stresnet.plan import Plan, compress
    from stresnet.utils.memory_format import channels_last_blockers, train_memory_format

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for rank, blocked in ((4, True), (8, False)):
        model = compress(timm.create_model("resnet18", num_classes=3),
                         Plan(layers={"layer2.0.downsample.0": {"type": "tucker2", "ranks": [rank, rank]}}),
                         init="random")
        assert bool(channels_last_blockers(model)) is blocked
        fmt, why = train_memory_format(model, True, cpu)
        assert (fmt, why is not None) == ((torch.contiguous_format, True) if blocked else (torch.channels_last, False))
        if blocked:
            assert "layer2.0.downsample.0" in why and "oneDNN#6035" in why
        assert train_memory_format(model, True, cuda) == (torch.channels_last, None)
        assert train_memory_format(model, False, cpu) == (torch.contiguous_format, None)
