"""Recipes: a YAML file that regenerates a zoo variant (or a comparison) from a base model and raw images.

A recipe is data, run by ``stresnet recipe run recipes/<file>.yaml``::

    format: stresnet-recipe/1
    name: stresnet18_8x                  # run folder runs/<name>, results recipes/results/<name>.json
    data: ${shared}/data/imagenette2-160 # ImageFolder root with train/ and val/
    input_size: 128
    base: {model: resnet18, num_classes: 10, checkpoint: ${shared}/models/resnet18_imagenette.safetensors}
    stages:                              # or  arms: {name: [stages], ...}  for comparisons
      - search: {budget: 8x, step: 16}
      - decompose: {}
      - finetune: {epochs: 2, lr: 0.01}
      - eval: {}
      - publish: {name: stresnet18_8x.imagenette}

``${shared}`` is ``$STRESNET_SHARED`` or ``../shared`` of the current folder; ``${env:VAR}`` reads
any environment variable; ``--set key.sub=value`` overrides any field, a number
indexing a list (``--set stages.2.finetune.epochs=1``), so an ImageNet recipe
runs wherever ImageNet lives. ``extends: other.yaml`` (relative to the file) starts from another
recipe and states only what differs (mappings merge key by key, lists replace): a variant
with another base cannot drift from its original. ``task: detect`` selects the detector stages.

    config.py       loading, overrides, variables, the checks every task shares
    runner.py       the one runner: stage folders, ``--resume``, arms, torchrun, results JSON + provenance
    tasks.py        the task registry (``classify``, ``detect``)
    stages/         the stages, by what they do; ``classify.py`` / ``detect.py`` assemble the tasks

The library writes only where it is told (``out_root``, ``results_path``); the CLI's
defaults are ``runs/`` and ``recipes/results/<name>.json`` in the current folder.
"""
from __future__ import annotations

from .config import RECIPE_FORMAT, RecipeError, shared_dir
from .runner import command_line
from .tasks import load_recipe, run_recipe

__all__ = ["RECIPE_FORMAT", "RecipeError", "load_recipe", "run_recipe", "shared_dir", "command_line"]
