"""The STResNet zoo as timm models: a base architecture plus a packaged plan, registered on ``import stresnet``.

Each variant is data: ``plans/<variant>.json`` (a plan over a timm base: ``resnet18``, ``efficientnet_lite0``),
built by :func:`stresnet.plan.build`. Pretrained weights are safetensors files
on the Hugging Face Hub, and every published file's sha256 and measured metrics
live in ``weights.json`` (written by ``stresnet publish`` from recipe results),
so a load verifies the file it got. That registry is also the one list of what
exists: only its tags carry an ``hf_hub_id`` (and so are pretrained in timm's
eyes); the others (``.in1k`` until ImageNet weights are made) are cfgs only.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..data import Reading
from ..imagenet.weights import KNOWN
from ..layers import registry
from ..plan import Plan, PlanError, build

HF_ORG = "stresnet"
WEIGHTS_FILENAME = "model.safetensors"
VARIANTS = (
    "stresnet18_2x", "stresnet18_4x", "stresnet18_8x", "stresnet18_16x", "stresnet18_32x",
    "stresnet_pico", "stresnet_nano", "stresnet_micro", "stresnet_milli", "stresnet_tiny",
    "stresnet_pico_searched", "stresnet_nano_searched", "stresnet_micro_searched", "stresnet_milli_searched",
    "stresnet_tiny_searched",
    "stresnet_lite0_1p5x", "stresnet_lite0_2x",
)
SEARCHED_SUFFIX = "_searched"  # the family member the search built at ST's budgets; its recipe is ST's variant's


@dataclass(frozen=True)
class ZooTag:
    """What a weight tag promises: the classes and input its weights were made for, how they read an image,
    and the split their published top-1 is measured on (so a user, a card and ``zoo-verify`` agree)."""

    num_classes: int
    input_size: tuple[int, int, int]
    dataset: str  # the Hub card's dataset id: what the weights were trained on
    evaluated_on: str  # 'val' (Imagenette val, 10-way) or 'ilsvrc-val' (1000-way on the ILSVRC2012_val_* files)
    summary: str  # one line for the card
    reading: Reading = Reading()  # normalisation, interpolation, eval crop (default: the recipes' Imagenette one)


TAGS: dict[str, ZooTag] = {
    "imagenette": ZooTag(10, (3, 128, 128), "imagenette", "val",
                         "fine-tuned on Imagenette (10 classes) at 128 px; top-1 on Imagenette val"),
    "in1k": ZooTag(1000, (3, 224, 224), "imagenet-1k", "imagenet-val", "ImageNet-1k (1000 classes) at 224 px"),
    # the 1000 ImageNet classes of the base, but trained only by distillation on 10-class images: the tag says so
    "kd_imagenette": ZooTag(1000, (3, 224, 224), "imagenette", "ilsvrc-val",
                            "ImageNet-1k classifier (1000 outputs) distilled from its dense base on Imagenette train "
                            "images only (10 classes, never full ImageNet); top-1 is 1000-way on the 435 ImageNet "
                            "validation images inside Imagenette",
                            reading=Reading.of_config(KNOWN["efficientnet-lite0"].pretrained_cfg)),  # its checkpoint's
}
# each variant's tags, in timm's order ('*': the default cfg of the bare name, weights or not)
_RESNET_TAGS = ("imagenette", "in1k*")
VARIANT_TAGS: dict[str, tuple[str, ...]] = {
    **{v: _RESNET_TAGS for v in VARIANTS if not v.startswith("stresnet_lite0")},
    "stresnet_lite0_1p5x": ("kd_imagenette",), "stresnet_lite0_2x": ("kd_imagenette",),
}
# variants whose recipe is not named after them (one comparison recipe makes several)
RECIPE_OF = {"stresnet_lite0_1p5x": "efficientnet_lite0_lrs", "stresnet_lite0_2x": "efficientnet_lite0_lrs"}
PAPERS = {"stresnet18": "arXiv:2511.11716", "stresnet_lite0": "arXiv:2111.01697", "stresnet": "arXiv:2601.05364"}


def paper_of(variant: str) -> str:
    """The arXiv id of the paper behind ``variant``: its first matching name prefix in ``PAPERS`` (specific first)."""
    return next(v for k, v in PAPERS.items() if variant.startswith(k))


def tags_of(variant: str) -> tuple[str, ...]:
    """The weight tags ``variant`` comes in (without timm's default marker)."""
    return tuple(t.rstrip("*") for t in VARIANT_TAGS[variant])


def zoo_tag(name: str) -> ZooTag:
    """The :class:`ZooTag` of ``arch.tag`` (the variant's default tag for a bare name)."""
    arch, _, tag = name.partition(".")
    return TAGS[tag or next((t.rstrip("*") for t in VARIANT_TAGS[arch] if t.endswith("*")), tags_of(arch)[0])]


class WeightsError(PlanError):
    """Published weights are missing, truncated or not the file that was published (one line)."""


@lru_cache(maxsize=None)
def packaged_plan(variant: str) -> Plan:
    """The plan shipped with the package for ``variant``."""
    path = resources.files("stresnet.zoo") / "plans" / f"{variant}.json"
    if not path.is_file():
        raise PlanError(f"zoo: no packaged plan for {variant!r}")
    return Plan.from_json(path.read_text(), source=f"plan {variant}")


def registry_path() -> Path:
    """The sha256/metrics registry: the package's ``weights.json`` ($STRESNET_WEIGHTS_REGISTRY overrides)."""
    return Path(os.environ.get("STRESNET_WEIGHTS_REGISTRY", Path(__file__).with_name("weights.json")))


@lru_cache(maxsize=None)
def weights_registry() -> dict[str, dict]:
    """``{'arch.tag': {sha256, metrics, recipe, ...}}`` of every published weight file."""
    path = registry_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def recipe_path(name: str) -> str:
    """The recipe (relative to a source checkout) that makes the weights of ``arch.tag``."""
    arch, _, tag = name.partition(".")
    if arch in RECIPE_OF:
        return f"recipes/{RECIPE_OF[arch]}.yaml"
    arch = arch.removesuffix(SEARCHED_SUFFIX)  # one recipe makes both arms: ST's ranks and the searched plan
    return f"recipes/{arch}{'' if tag in ('', 'imagenette') else '_' + tag}.yaml"


def recipe_command(name: str) -> str:
    """The command that regenerates (and installs) the weights of ``arch.tag``."""
    return f"stresnet recipe run {recipe_path(name)}"


def _how_to_make(name: str) -> str:
    """``make them with `<command>```, or that no recipe does yet (known only in a source checkout)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "recipes").is_dir() and not (checkout / recipe_path(name)).is_file():
        return f"no recipe makes them yet ({recipe_path(name)} does not exist)"
    return f"make them with `{recipe_command(name)}`"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_id(name: str) -> str:
    """The Hugging Face repo that ``arch.tag``'s weights are published to."""
    return f"{HF_ORG}/{name}"


def base_cfg(plan: Plan) -> Any:
    """timm's default pretrained cfg of the plan's base architecture (its first conv and classifier names)."""
    import timm

    return timm.get_pretrained_cfg(plan.base["arch"])


def first_conv_name(plan: Plan) -> str:
    """The name of the stem's first real ``nn.Conv2d`` (timm's ``first_conv``) under ``plan``."""
    stem = base_cfg(plan).first_conv
    spec = plan.layers.get(stem)
    if spec is None:
        return stem
    inner = registry.for_spec(spec).input_conv  # where timm's in_chans adaptation must act
    if inner is None:
        single = ", ".join(f.name for f in registry.registered() if f.input_conv is not None)
        raise PlanError(f"zoo: a {spec['type']!r} stem has no single first conv (a zoo stem is one of {single})")
    return f"{stem}.{inner}" if inner else stem


def classifier_name(plan: Plan) -> str:
    """The name of the final classifier layer (timm's ``classifier``) under ``plan``: the factorised head's output
    layer when the plan factorises it (its ``.weight`` is the one timm drops for a new ``num_classes``)."""
    head = base_cfg(plan).classifier
    spec = plan.layers.get(head)
    if spec is None:
        return head
    last = registry.for_spec(spec).output_layer
    if last is None:
        raise PlanError(f"zoo: a {spec['type']!r} head has no single output layer for timm's classifier")
    return f"{head}.{last}" if last else head


def _cfg(variant: str, tag: str, **kwargs: Any) -> dict:
    name = f"{variant}.{tag}"
    published = weights_registry().get(name)
    meaning, plan = TAGS[tag], packaged_plan(variant)
    return {
        # only published weights get a source: timm then lists exactly these tags as pretrained
        "hf_hub_id": published.get("hf_hub_id", hub_id(name)) if published else None,
        "hf_hub_filename": WEIGHTS_FILENAME,
        "num_classes": meaning.num_classes,
        "input_size": meaning.input_size,
        "pool_size": tuple(s // 32 for s in meaning.input_size[1:]),
        "crop_pct": meaning.reading.crop_pct,
        "interpolation": meaning.reading.interpolation,
        "mean": meaning.reading.mean,
        "std": meaning.reading.std,
        "first_conv": first_conv_name(plan),
        "classifier": classifier_name(plan),
        "license": "apache-2.0",
        "paper_ids": paper_of(variant),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    f"{variant}.{tag}": _cfg(variant, tag.rstrip("*"))
    for variant, tags in VARIANT_TAGS.items() for tag in tags
})


def _verified_weights(cfg: dict) -> str:
    """Fetch (or find in the offline cache) the weight file of ``cfg`` and check its sha256 and integrity."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    name = cfg.get("architecture", "") + (f".{cfg['tag']}" if cfg.get("tag") else "")
    filename = cfg.get("hf_hub_filename") or WEIGHTS_FILENAME
    if cfg.get("file"):  # a file, or a published folder (local-dir:)
        path = Path(cfg["file"]) / filename if Path(cfg["file"]).is_dir() else cfg["file"]
    else:
        # a tag published after import (timm's listing is a snapshot) is in the live registry
        repo = cfg.get("hf_hub_id") or weights_registry().get(name, {}).get("hf_hub_id")
        if not repo:
            published = ", ".join(sorted(weights_registry())) or "none"
            raise WeightsError(f"weights {name}: none are published (published: {published}); {_how_to_make(name)}")
        try:
            path = hf_hub_download(repo, filename)
        except (LocalEntryNotFoundError, OSError) as e:
            raise WeightsError(f"weights {name} ({repo}/{filename}) not found "
                               f"({type(e).__name__}); regenerate them with `{recipe_command(name)}`") from None
    if not Path(path).is_file():
        raise WeightsError(f"weights {name}: {path} is missing; regenerate them with `{recipe_command(name)}`")
    expected = weights_registry().get(name, {}).get("sha256")
    if expected and sha256_of(path) != expected:
        raise WeightsError(f"weights {name}: {path} has sha256 {sha256_of(path)[:12]}... but {expected[:12]}... "
                           f"was published (corrupt or truncated); regenerate with `{recipe_command(name)}`")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"weights {name}: {path} is not a readable safetensors file ({e}); "
                           f"regenerate with `{recipe_command(name)}`") from None
    return str(path)


def _feature_info(model: nn.Module) -> None:
    """Keep timm's feature_info true to a narrowed stem (features_only reads channel counts from it)."""
    info = getattr(model, "feature_info", None)
    if info:
        for entry in info:
            if entry.get("module") == "act1":
                entry["num_chs"] = model.bn1.num_features


def _adapt_in_chans(model: nn.Module, name: str, in_chans: int) -> None:
    """Give the stem's first conv ``in_chans`` inputs, as timm's ``in_chans`` does for a plain stem.

    The plan's ranks are for the base's input channels (a Tucker-2 stem's input
    rank of 3 cannot be built on 1 channel), so the model is built for those and
    only the first conv's input side changes: the layer that timm's
    ``adapt_input_conv`` adapts in pretrained weights (``first_conv``).
    """
    conv = model.get_submodule(name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise PlanError(f"zoo: cannot change in_chans: {name} is not a plain nn.Conv2d")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    new.train(conv.training)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    model.in_chans = in_chans


def _build_variant(plan: Plan | dict | None = None, variant: str = "", in_chans: int = 3,
                   **kwargs: Any) -> nn.Module:
    plan = Plan.from_dict(plan) if isinstance(plan, dict) else (plan or packaged_plan(variant))
    head, classes = base_cfg(plan).classifier, kwargs.get("num_classes")
    if head in plan.layers and classes is not None and classes != (plan.base or {}).get("num_classes", 1000):
        # timm's num_classes gives a new head, trained from scratch: the plan's factorised head does not carry over
        plan = replace(plan, layers={k: v for k, v in plan.layers.items() if k != head})
    model = build(plan, **kwargs)  # at the base's input channels, which the plan's ranks were made for
    first_conv = first_conv_name(plan)
    if in_chans != getattr(model, "in_chans", 3):
        _adapt_in_chans(model, first_conv, in_chans)
    # the base's build declared its own first conv ('conv1'); timm adapts pretrained input convs by this trait
    model._traits = {**getattr(model, "_traits", {}), "first_conv": first_conv}
    _feature_info(model)
    return model


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm-style factory: build (base, plan) with ``build_model_with_cfg``; verify weights before loading them."""
    from timm.models._builder import resolve_pretrained_cfg

    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=overlay).to_dict()
        cfg.setdefault("architecture", variant)
        # load the verified local file, whatever the cfg's source (timm, hf-hub:, local-dir:)
        overlay.update(file=_verified_weights(cfg), hf_hub_id=None, source="")
    return build_model_with_cfg(
        partial(_build_variant, variant=variant), variant, pretrained,
        pretrained_cfg_overlay=overlay or None,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", (0, 1, 2, 3, 4)),
                         # timm's efficientnets keep their stages in one Sequential ('blocks.N'): look inside it
                         flatten_sequential=packaged_plan(variant).base["arch"].startswith("efficientnet")),
        **kwargs,
    )


@register_model
def stresnet18_2x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 with Tucker-2 ranks chosen by the CompressNAS search at 1/2 of the parameters."""
    return _create("stresnet18_2x", pretrained, **kwargs)


@register_model
def stresnet18_4x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 with Tucker-2 ranks chosen by the CompressNAS search at 1/4 of the parameters."""
    return _create("stresnet18_4x", pretrained, **kwargs)


@register_model
def stresnet18_8x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 with Tucker-2 ranks chosen by the CompressNAS search at 1/8 of the parameters."""
    return _create("stresnet18_8x", pretrained, **kwargs)


@register_model
def stresnet18_16x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 with Tucker-2 ranks chosen by the CompressNAS search at 1/16 of the parameters."""
    return _create("stresnet18_16x", pretrained, **kwargs)


@register_model
def stresnet18_32x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 with Tucker-2 ranks chosen by the CompressNAS search at 1/32 of the parameters."""
    return _create("stresnet18_32x", pretrained, **kwargs)


@register_model
def stresnet_pico(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """STResNet Pico (0.63 M params, 0.12 GMACs at 224, 1000 classes): MCU-sized Tucker-2 ResNet-18."""
    return _create("stresnet_pico", pretrained, **kwargs)


@register_model
def stresnet_nano(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """STResNet Nano (1.02 M params, 0.52 GMACs at 224, 1000 classes)."""
    return _create("stresnet_nano", pretrained, **kwargs)


@register_model
def stresnet_micro(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """STResNet Micro (1.58 M params, 0.75 GMACs at 224, 1000 classes)."""
    return _create("stresnet_micro", pretrained, **kwargs)


@register_model
def stresnet_milli(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """STResNet Milli (3.14 M params, 1.07 GMACs at 224, 1000 classes)."""
    return _create("stresnet_milli", pretrained, **kwargs)


@register_model
def stresnet_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """STResNet Tiny (4.16 M params, 1.21 GMACs at 224, 1000 classes)."""
    return _create("stresnet_tiny", pretrained, **kwargs)


@register_model
def stresnet_pico_searched(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The Pico member built by the search (stem and Tucker-2 ranks) within ST Pico's params, int8 flash,
    MACs and peak RAM at 224 px."""
    return _create("stresnet_pico_searched", pretrained, **kwargs)


@register_model
def stresnet_nano_searched(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The Nano member built by the search (stem and Tucker-2 ranks) within ST Nano's params, int8 flash,
    MACs and peak RAM at 224 px."""
    return _create("stresnet_nano_searched", pretrained, **kwargs)


@register_model
def stresnet_micro_searched(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The Micro member built by the search (stem and Tucker-2 ranks) within ST Micro's params, int8 flash,
    MACs and peak RAM at 224 px."""
    return _create("stresnet_micro_searched", pretrained, **kwargs)


@register_model
def stresnet_milli_searched(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The Milli member built by the search (stem and Tucker-2 ranks) within ST Milli's params, int8 flash,
    MACs and peak RAM at 224 px."""
    return _create("stresnet_milli_searched", pretrained, **kwargs)


@register_model
def stresnet_tiny_searched(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The Tiny member built by the search (stem and Tucker-2 ranks) within ST Tiny's params, int8 flash,
    MACs and peak RAM at 224 px."""
    return _create("stresnet_tiny_searched", pretrained, **kwargs)


@register_model
def stresnet_lite0_1p5x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 (1000 ImageNet outputs) at 1/1.5 of its stored params: calibrated low-rank (SVD of three
    pointwise convs, the head conv and the classifier, output bases fitted on Imagenette images), the arm of the
    LR+S comparison with the best selection-split top-1 after distillation."""
    return _create("stresnet_lite0_1p5x", pretrained, **kwargs)


@register_model
def stresnet_lite0_2x(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 (1000 ImageNet outputs) at 1/2 of its stored params: calibrated low-rank (SVD of seven
    block pointwise convs, the head conv and the classifier, output bases fitted on Imagenette images), the arm of
    the LR+S comparison with the best selection-split top-1 after distillation. Its classifier keeps the output
    directions those 10 classes excite: a specialist, not a general ImageNet model (the card's COCO agreement)."""
    return _create("stresnet_lite0_2x", pretrained, **kwargs)
