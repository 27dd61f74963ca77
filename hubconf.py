"""torch.hub entry points for the stresnet zoo.

    torch.hub.load('<repo dir or owner/stresnet>', 'stresnet18_8x', source='local', pretrained=False)

Imports are scoped inside each entry so ``torch.hub.list`` works with only torch
installed; building a model needs timm and this package (``pip install -e .``).
``pretrained=True`` takes a weight tag (default ``'imagenette'``) among those with
published weights (the package's ``weights.json``; ``timm.list_pretrained('stresnet*')``
lists them) and loads verified safetensors from the Hugging Face cache; a tag
without weights raises an error naming the recipe that makes them.
The YOLO entries (``yolov5s_2x``, ``yolov5n_2x``) also need ``ultralytics``
(``pip install -e ".[detect]"``) and return an ultralytics ``YOLO``.
"""
dependencies = ["torch", "timm", "safetensors"]


def _create(name: str, pretrained: bool, tag: str, **kwargs):
    import timm

    import stresnet  # noqa: F401  (registers the zoo with timm)

    return timm.create_model(f"{name}.{tag}" if pretrained else name, pretrained=pretrained, **kwargs)


def stresnet18_2x(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """ResNet-18 with Tucker-2 ranks searched (Fisher estimator + ILP) at 1/2 of the parameters.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet18_2x", pretrained, tag, **kwargs)


def stresnet18_4x(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """ResNet-18 with Tucker-2 ranks searched (Fisher estimator + ILP) at 1/4 of the parameters.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet18_4x", pretrained, tag, **kwargs)


def stresnet18_8x(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """ResNet-18 with Tucker-2 ranks searched (Fisher estimator + ILP) at 1/8 of the parameters.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet18_8x", pretrained, tag, **kwargs)


def stresnet18_16x(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """ResNet-18 with Tucker-2 ranks searched (Fisher estimator + ILP) at 1/16 of the parameters.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet18_16x", pretrained, tag, **kwargs)


def stresnet18_32x(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """ResNet-18 with Tucker-2 ranks searched (Fisher estimator + ILP) at 1/32 of the parameters.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet18_32x", pretrained, tag, **kwargs)


def stresnet_pico(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """STResNet Pico: 0.63 M params, 0.12 GMACs at 224 (1000 classes); MCU-sized.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_pico", pretrained, tag, **kwargs)


def stresnet_nano(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """STResNet Nano: 1.02 M params, 0.52 GMACs at 224 (1000 classes).

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_nano", pretrained, tag, **kwargs)


def stresnet_micro(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """STResNet Micro: 1.58 M params, 0.75 GMACs at 224 (1000 classes).

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_micro", pretrained, tag, **kwargs)


def stresnet_milli(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """STResNet Milli: 3.14 M params, 1.07 GMACs at 224 (1000 classes).

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_milli", pretrained, tag, **kwargs)


def stresnet_tiny(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """STResNet Tiny: 4.16 M params, 1.21 GMACs at 224 (1000 classes).

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_tiny", pretrained, tag, **kwargs)


def stresnet_lite0_1p5x(pretrained: bool = False, tag: str = "kd_imagenette", **kwargs):
    """EfficientNet-Lite0 (1000 ImageNet classes) at 1/1.5 of its stored params: searched low-rank, the best arm
    (on the selection split) of recipes/efficientnet_lite0_lrs.yaml, distilled on Imagenette images only.

    Args: pretrained (load published weights), tag (default 'kd_imagenette': distilled on 10-class images, not
    trained on ImageNet), and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_lite0_1p5x", pretrained, tag, **kwargs)


def stresnet_lite0_2x(pretrained: bool = False, tag: str = "kd_imagenette", **kwargs):
    """EfficientNet-Lite0 (1000 ImageNet classes) at 1/2 of its stored params: LR+S (Tucker-2 + sparse), the best
    arm (on the selection split) of recipes/efficientnet_lite0_lrs.yaml, distilled on Imagenette images only.

    Args: pretrained (load published weights), tag (default 'kd_imagenette': distilled on 10-class images, not
    trained on ImageNet), and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_lite0_2x", pretrained, tag, **kwargs)


def yolov5s_2x(pretrained: bool = False, weights: str | None = None, **kwargs):
    """YOLOv5su (ultralytics yolov5s.yaml, anchor-free) with Tucker-2 ranks searched at 1/2 of the parameters.

    Returns an ultralytics ``YOLO``: ``model('image.jpg')`` gives ``Results`` with boxes. Args:
    weights (a recipe's model.safetensors), nc (classes, default 80). No COCO weights are
    published: ``pretrained=True`` raises, naming the recipe that makes them.
    """
    from stresnet.detect.hub import yolo_entry

    return yolo_entry("yolov5s_2x", pretrained, weights, **kwargs)


def yolov5n_2x(pretrained: bool = False, weights: str | None = None, **kwargs):
    """YOLOv5nu (ultralytics yolov5n.yaml, anchor-free) with Tucker-2 ranks searched at 1/2 of the parameters.

    Returns an ultralytics ``YOLO``: ``model('image.jpg')`` gives ``Results`` with boxes. Args:
    weights (a recipe's model.safetensors), nc (classes, default 80). No COCO weights are
    published: ``pretrained=True`` raises, naming the recipe that makes them.
    """
    from stresnet.detect.hub import yolo_entry

    return yolo_entry("yolov5n_2x", pretrained, weights, **kwargs)


def stresnet_pico_searched(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """The Pico member built by the search (stem + Tucker-2 ranks) within ST Pico's four MCU budgets.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_pico_searched", pretrained, tag, **kwargs)


def stresnet_nano_searched(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """The Nano member built by the search (stem + Tucker-2 ranks) within ST Nano's four MCU budgets.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_nano_searched", pretrained, tag, **kwargs)


def stresnet_micro_searched(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """The Micro member built by the search (stem + Tucker-2 ranks) within ST Micro's four MCU budgets.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_micro_searched", pretrained, tag, **kwargs)


def stresnet_milli_searched(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """The Milli member built by the search (stem + Tucker-2 ranks) within ST Milli's four MCU budgets.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_milli_searched", pretrained, tag, **kwargs)


def stresnet_tiny_searched(pretrained: bool = False, tag: str = "imagenette", **kwargs):
    """The Tiny member built by the search (stem + Tucker-2 ranks) within ST Tiny's four MCU budgets.

    Args: pretrained (load published weights), tag (one with published weights, default 'imagenette'),
    and timm kwargs such as num_classes, in_chans or features_only.
    """
    return _create("stresnet_tiny_searched", pretrained, tag, **kwargs)
