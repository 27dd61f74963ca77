"""Factorised layers, built only from plain ``nn.Conv2d`` / ``nn.Linear`` (plus reshapes), one type a module.

Keeping every factorised layer a composition of stock modules means a compressed
model exports to ONNX, quantises with stock tools and loads from safetensors
with no custom kernels. Each type module (``tucker2``, ``tt``, ``tt5``, ``svd``,
``sparse``, ``lrs``, and ``full``) holds the layer it builds and a
:class:`~stresnet.layers.registry.Factorisation` stating its spec, rank limits,
builder and cost, registered on import; see :mod:`stresnet.layers.registry`.
"""
# importing a type module registers it; this order is the order of the "expected one of ..." messages
from . import full, tucker2, tt, tt5, svd, sparse, lrs  # noqa: F401, I001
from .lrs import LowRankSparseConv2d
from .registry import Factorisation, LayerGeometry, SpecError, for_spec, get, register, registered, unregister
from .sparse import MaskedConv2d
from .svd import LowRankConv2d, LowRankLinear
from .tt import TTConv2d
from .tt5 import TT5Conv2d
from .tucker2 import Tucker2Conv2d

__all__ = [
    "Tucker2Conv2d",
    "TTConv2d",
    "TT5Conv2d",
    "LowRankConv2d",
    "LowRankLinear",
    "MaskedConv2d",
    "LowRankSparseConv2d",
    "Factorisation",
    "LayerGeometry",
    "SpecError",
    "register",
    "unregister",
    "registered",
    "get",
    "for_spec",
]
