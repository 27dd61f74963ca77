"""The search spaces: which factorisation types the search offers each kind of layer.

A space is chosen per search (``stresnet search --space``, a recipe's ``search: {space: ...}``), so that the
paper's space, which built every ResNet-18 plan in the zoo, keeps regenerating them while other networks get
the forms that suit their layers. Plain data (no torch import): the CLI lists the names in ``--help``.
"""
from __future__ import annotations

__all__ = ["LAYER_KINDS", "SPACES"]

LAYER_KINDS = ("conv", "pointwise", "grouped", "linear")
# which factorisation types the search offers each layer kind. "compressnas": the paper's space (every ungrouped
# conv, 1x1 included, as Tucker-2; linears and grouped convs left as they are), which built every ResNet-18 plan
# in the zoo. "any": each kind the form that suits it: Tucker-2 for kxk convs, a two-factor SVD for a matrix
# (1x1 conv, linear), magnitude-pruned sparse weights for grouped / depthwise convs, which have no channel modes.
# "lowrank": the same without the sparse parts (the low-rank-only arm of an LR+S comparison).
SPACES: dict[str, dict[str, tuple[str, ...]]] = {
    "compressnas": {"conv": ("tucker2",), "pointwise": ("tucker2",)},
    "any": {"conv": ("tucker2",), "pointwise": ("svd",), "linear": ("svd",), "grouped": ("sparse",)},
    "lowrank": {"conv": ("tucker2",), "pointwise": ("svd",), "linear": ("svd",)},  # "any" without sparse parts
}
