"""stresnet.cost: the documented params / MACs / int8 flash / int8 peak-RAM rules, checked on numbers worked by hand."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from stresnet.cost import Profile, format_table, module_cost, profile
from stresnet.layers import LowRankSparseConv2d, MaskedConv2d, TT5Conv2d, Tucker2Conv2d


class Tiny(nn.Module):
    """conv(2->4, 3x3, no bias) -> bn -> relu -> conv(4->2, 3x3, bias) -> + x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x)))) + x


class TinyBranchy(Tiny):
    """Tiny with data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu(self.bn(self.conv1(x))))
        return y + x if x.sum() > -1e9 else y


class ReluKeepsInput(nn.Module):
    """relu(y) + y: the ReLU cannot run in place because y is still needed by the add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(y) + y


def test_tiny_model_by_hand():
    p = profile(Tiny(), (2, 8, 8))
    # params: conv1 4*2*9 = 72, bn 2*4 = 8, conv2 2*4*9 + 2 = 74
    assert p.params == 154
    # MACs: 64 positions * (4*18) + 64 * (2*36)
    assert p.macs == 4608 + 4608
    # flash: conv1 72 + 8*4, conv2 72 + 8*2 (its bias is part of the 8 B/channel), BN folded: 0
    assert p.flash_bytes == 104 + 88
    # RAM (bytes = elements): x 2*64 = 128 lives until the add; conv1 out 4*64 = 256, BN and ReLU in place;
    # while conv2 runs: x 128 + conv1 out 256 + conv2 out 128 = 512 (the add reuses conv2's buffer: 256)
    assert p.peak_ram_bytes == 512
    assert p.ram_method == "fx-liveness"
    assert p.peak_ram_at == "conv2"
    assert [(layer.name, layer.params, layer.macs, layer.flash_bytes, layer.out_bytes) for layer in p.layers] == [
        ("conv1", 72, 4608, 104, 256),
        ("conv2", 74, 4608, 88, 128),
    ]
    assert p.input_size == (2, 8, 8)


def test_inplace_only_when_the_input_dies():
    # x 128 [conv]; y 256 lives until the add; relu(y) needs its own 256 (y has a later user) -> 512
    assert profile(ReluKeepsInput(), (2, 8, 8)).peak_ram_bytes == 512


def test_untraceable_model_falls_back_to_leaf_max():
    p = profile(TinyBranchy(), (2, 8, 8))
    assert p.ram_method == "leaf-max"
    # max over conv calls of in + out: conv1 128 + 256 = conv2 256 + 128 = 384 (BN / ReLU in place: skipped)
    assert p.peak_ram_bytes == 384
    assert (p.params, p.macs, p.flash_bytes) == (154, 9216, 192)


def test_resnet18_numbers():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=1000)
    p = profile(model, (3, 224, 224))
    assert p.params == 11_689_512
    assert abs(p.macs - 1.814e9) / 1.814e9 < 0.005
    assert sum(layer.macs for layer in p.layers) == p.macs
    # flash: 4,800 BN channels (each BN follows a conv) -> BN params 9,600; fc bias 1,000;
    # weights = 11,689,512 - 9,600 - 1,000 = 11,678,912; + 8 B * (4,800 conv + 1,000 fc) channels
    assert p.flash_bytes == 11_678_912 + 8 * 5_800
    # RAM: stem conv 3*224*224 = 150,528 in + 64*112*112 = 802,816 out = 953,344; BN/ReLU in place;
    # maxpool holds 802,816 in + 64*56*56 = 200,704 out = 1,003,520, the peak. Later: layer1 conv2 holds
    # shortcut + conv1 out + conv2 out = 3 * 200,704 = 602,112; deeper stages are smaller.
    assert p.peak_ram_bytes == 1_003_520
    assert p.peak_ram_at == "maxpool"
    assert p.ram_method == "fx-liveness"
    d = json.loads(json.dumps(p.to_dict()))
    assert d["params_m"] == pytest.approx(11.689512)
    assert d["gmacs"] == pytest.approx(p.macs / 1e9)
    assert d["flash_kib"] == pytest.approx(p.flash_bytes / 1024)
    assert d["peak_ram_kib"] == pytest.approx(980.0)
    assert len(d["layers"]) == 21 and d["layers"][0]["name"] == "conv1"


def _masked(c_in: int = 4, c_out: int = 3, bias: bool = True) -> MaskedConv2d:
    conv = MaskedConv2d(c_in, c_out, 3, padding=1, bias=bias)
    mask = torch.zeros_like(conv.mask)
    mask.view(c_out, -1)[0, :5] = 1  # channel 0 keeps 5, channel 1 none, channel 2 keeps 7
    mask.view(c_out, -1)[2, 10:17] = 1
    conv.mask.copy_(mask)
    return conv


def test_masked_conv_sparse_rules():
    conv = _masked()
    p = profile(conv, (4, 6, 6))
    # nnz = 12: params 12 values + 12 indices + (3+1) row pointers + 3 bias
    assert p.params == 31
    # flash: 12 B values + 2 B * 12 indices + 4 B * 4 row pointers + 8 B * 3 channels (standalone)
    assert p.flash_bytes == 12 + 24 + 16 + 24
    # MACs: 36 output positions * 12 kept weights (dense would be 36 * 3 * 36 = 3,888)
    assert p.macs == 432
    assert module_cost(conv, (4, 6, 6)) == {"params": 31.0, "flash": 76.0, "macs": 432.0}


def test_masked_conv_index_width():
    wide = MaskedConv2d(7282, 1, 3, bias=False)  # slice 7,282 * 9 = 65,538 positions > 65,536: 4-byte indices
    wide.mask.zero_()
    wide.mask.view(-1)[:10] = 1
    assert module_cost(wide, (7282, 3, 3))["flash"] == 10 + 4 * 10 + 4 * 2 + 8
    narrow = MaskedConv2d(65536, 1, 1, bias=False)  # slice 65,536: every position fits a uint16
    narrow.mask.zero_()
    narrow.mask.view(-1)[:10] = 1
    assert module_cost(narrow, (65536, 1, 1))["flash"] == 10 + 2 * 10 + 4 * 2 + 8


def test_low_rank_sparse_layer():
    layer = LowRankSparseConv2d(4, 3, [2, 2], 0.1, kernel_size=3, padding=1)
    layer.sparse.mask.copy_(_masked(bias=False).mask)
    cost = module_cost(layer, (4, 6, 6))
    # low-rank part: 1x1 4->2 (8), 3x3 2->2 (36), 1x1 2->3 (6); sparse part 2*12 + 4, no bias
    assert cost["params"] == 8 + 36 + 6 + 28
    # flash: (8 + 16) + (36 + 16) + (6 + 24); sparse 12 + 24 + 16 with no bias/scale of its own
    assert cost["flash"] == 24 + 52 + 30 + 52
    # MACs: 36 * (2*4 + 2*18 + 3*2) + 36 * 12 (sparse)
    assert cost["macs"] == 36 * 50 + 432
    p = profile(layer, (4, 6, 6))
    assert (p.params, p.flash_bytes, p.macs) == (cost["params"], cost["flash"], cost["macs"])


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), (16, 15, 15)),
        (nn.Conv2d(16, 32, (3, 5), stride=(1, 2), padding=(0, 2), dilation=2, bias=True), (16, 12, 11)),
        (nn.Conv2d(16, 16, 3, padding="same", groups=4), (16, 7, 9)),
        (nn.Linear(64, 10), (64,)),
        (nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)), (8, 9, 9)),
    ],
)
def test_module_cost_matches_profile(layer, shape):
    cost, p = module_cost(layer, shape), profile(layer, shape)
    assert cost == {"params": float(p.params), "flash": float(p.flash_bytes), "macs": float(p.macs)}
    assert module_cost(layer, (5, *shape)) == cost  # a batch dimension is ignored: costs are per sample


def test_module_cost_by_hand_single_conv():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    # out 8x8 (15 -> 8); weights 32*16*9 = 4,608; MACs 64 * 4,608
    assert module_cost(conv, (16, 15, 15)) == {"params": 4608.0, "flash": 4608.0 + 8 * 32, "macs": 64.0 * 4608}


def test_tucker2_cost():
    layer = Tucker2Conv2d(8, 6, [4, 3], kernel_size=3, padding=1)
    cost = module_cost(layer, (8, 5, 5))
    # 1x1 8->3 (24), 3x3 3->4 (108), 1x1 4->6 (24); MACs 25 * (24 + 108 + 24); flash + 8 B * (3 + 4 + 6)
    assert cost == {"params": 156.0, "flash": 156.0 + 8 * 13, "macs": 25.0 * 156}
    p = profile(layer, (8, 5, 5))
    assert (p.params, p.flash_bytes, p.macs) == (cost["params"], cost["flash"], cost["macs"])


def test_tt5_cost():
    # C_out = o1*o2 = 3*2, C_in = i1*i2 = 2*4; ranks (r1, r2, r3, r4) = (2, 3, 4, 2); stride 2: 5x5 -> 3x3
    layer = TT5Conv2d(8, 6, [2, 3, 4, 2], [[3, 2], [2, 4]], kernel_size=3, stride=2, padding=1, bias=True)
    cost = module_cost(layer, (8, 5, 5))
    # weights: in_split 4->2 (8), in_mix 4->4 (16), core 3x3 4->3 (108), out_mix 3->4 (12), out_split 2->3 (6)
    assert cost["params"] == 150 + 6  # + its own bias
    # flash: weights + 8 B * (2 + 4 + 3 + 4 + 3) conv channels + 8 B * 6 for the layer output (the bias)
    assert cost["flash"] == 150 + 8 * 16 + 8 * 6
    # MACs: in_split 2*25*2*4 = 400 (batch i1), in_mix 25*4*4 = 400, core 9*3*36 = 972,
    # out_mix 9*4*3 = 108, out_split 2*9*3*2 = 108 (batch o2)
    assert cost["macs"] == 400 + 400 + 972 + 108 + 108
    p = profile(layer, (8, 5, 5))
    assert (p.params, p.flash_bytes, p.macs) == (cost["params"], cost["flash"], cost["macs"])
    # RAM: ends are 200 in + 54 out, but in_split holds the 200 B input + 2*2*25 = 100 B output
    assert p.peak_ram_bytes == 300


def test_tt5_inside_a_model_traces():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        TT5Conv2d(8, 6, [2, 3, 4, 2], [[3, 2], [2, 4]], kernel_size=3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    )
    p = profile(model, (3, 5, 5))
    assert p.ram_method == "fx-liveness"
    parts = [module_cost(model[0], (3, 5, 5)), module_cost(model[3], (8, 5, 5)), module_cost(model[6], (6,))]
    assert p.macs == sum(c["macs"] for c in parts)
    assert p.flash_bytes == sum(c["flash"] for c in parts)  # BN folded
    assert p.params == sum(c["params"] for c in parts) + 16  # + BN weight and bias


def test_profile_leaves_model_unchanged():
    model = Tiny()
    model.train()
    model.conv2.eval()  # mixed flags must come back exactly
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 2, 8, 8)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    model.conv2.eval()
    rng = torch.get_rng_state()

    profile(model, (2, 8, 8))

    assert {name: m.training for name, m in model.named_modules()} == flags
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():  # BN running stats untouched although the model was in train mode
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_format_table():
    p = Profile(params=11_689_512, macs=1_814_073_344, flash_bytes=11_725_312, peak_ram_bytes=1_003_520,
                input_size=(3, 224, 224))
    q = Profile(params=1_000, macs=2_000, flash_bytes=3_072, peak_ram_bytes=512, input_size=(3, 32, 32))
    table = format_table({"resnet18": p, "a-much-longer-name": q})
    lines = table.splitlines()
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1  # aligned
    for text in ("params (M)", "GMACs", "int8 flash (KiB)", "peak RAM (KiB)"):
        assert text in lines[0]
    assert lines[2].split() == ["resnet18", "11.690", "1.814", "11,450.5", "980.0"]
    assert lines[3].split() == ["a-much-longer-name", "0.001", "0.000", "3.0", "0.5"]
