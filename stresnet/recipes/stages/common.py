"""What the classification stages share: the run context (data, base, current model), the state, the checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ...data import DataSplit, Folder, Reading
from ..config import RecipeError
from ..runner import Run, StageState

TRAIN_EXTRA = ("id", "teacher", "sparsity", "rho", "updates_per_epoch", "n_iter", "choose", "compare_start")


@dataclass
class State(StageState):
    """What flows between stages: the current weights, plan, and whether the model is already compressed."""

    weights: str | None = None
    plan: str | None = None
    compressed: bool = False
    sparsity: dict | None = None
    calibration: dict | None = None  # {"images", "seed"} of a calibrated search: later decompositions match it


@dataclass
class ClassifyRun(Run):
    """The run context of a classification recipe: its data splits, base model and current model."""

    @property
    def data(self) -> Path | Folder:
        """The data *folder* (the search reads ``<data>/train``, ``<data>/val``): the recipe's folder, or the one
        torchvision's Imagenette lives in (``<data_dir>/imagenette2-160``, downloaded first when the recipe asks).
        Other dataset specs have no folder: one line."""
        from ...data import imagenette_folder, is_spec

        data = self.recipe["data"]
        if not is_spec(data):
            return self._read(Path(data))
        folder = imagenette_folder(self.split("train"))
        if folder is None:
            raise RecipeError(f"recipe {self.recipe['_path']}: data {data} is a dataset spec; the search stage "
                              f"reads a folder (data: PATH with train/ and val/, or torch/imagenette2-160)")
        return self._read(folder)

    @cached_property
    def reading(self) -> Reading | None:
        """How the base reads images (recipe field ``reading``), None for the recipes' default reading.
        ``reading: {preprocess: checkpoint, labels: imagenet-1k}``: the base checkpoint's own normalisation,
        interpolation and crop (its timm pretrained cfg, with the overrides stored in the checkpoint), and
        ImageNet-1k targets for the synset-named class folders (a 1000-class base on Imagenette)."""
        spec = self.recipe.get("reading")
        if spec is None:
            return None
        from ...imagenet.evaluate import data_config
        from ...imagenet.weights import checkpoint_cfg

        if spec.get("preprocess", "default") == "checkpoint":
            checkpoint = self.base.get("checkpoint")
            config = data_config(self.architecture(), checkpoint_cfg(checkpoint) if checkpoint else {})
            return Reading.of_config(config, spec.get("labels"))
        return Reading(labels=spec.get("labels"))

    def _read(self, path: Path) -> Path | Folder:
        reading = self.reading
        return path if reading is None else Folder(path, reading)

    @property
    def input_size(self) -> int:
        return int(self.recipe.get("input_size", 224))

    @property
    def base(self) -> dict:
        return self.recipe["base"]

    def split(self, name: str) -> Path | Folder | DataSplit:
        """``<data>/<name>`` for a folder; for a timm dataset spec (``data: hfds/imagenet-1k``,
        ``torch/imagenette2-160``), its split with the recipe's ``data_dir`` (timm's ``--data-dir``) and
        ``dataset_download`` (timm's ``--dataset-download``; off unless the recipe asks)."""
        from ...data import data_split

        where = f"recipe {self.recipe['_path']}"
        download = self.recipe.get("dataset_download", False)
        if not isinstance(download, bool):
            raise RecipeError(f"{where}: dataset_download must be true or false, got {download!r}")
        split = data_split(self.recipe["data"], name, self.recipe.get("data_dir"), download)
        if isinstance(split, Path) and not split.is_dir():
            raise RecipeError(f"{where}: data split {split} does not exist (set another root with --set data=PATH, "
                              f"or download Imagenette: --set data=torch/imagenette2-160 --set data_dir=DIR "
                              f"--set dataset_download=true)")
        return self._read(split) if isinstance(split, Path) else split

    def base_model(self, checkpoint: str | None = None) -> nn.Module:
        from ...resolve import model_from_name

        if checkpoint is None and self.base.get("pretrained"):  # timm's own weights (needs the network)
            import timm

            return timm.create_model(self.base["model"], pretrained=True, num_classes=self.base.get("num_classes"))
        return model_from_name(self.base["model"], num_classes=self.base.get("num_classes"), checkpoint=checkpoint)

    def architecture(self) -> nn.Module:
        """The base architecture with timm's random init (never downloaded weights)."""
        from ...resolve import model_from_name

        return model_from_name(self.base["model"], num_classes=self.base.get("num_classes"))

    def model(self, state: State) -> nn.Module:
        """The current model: the base architecture, the plan applied when compressed, the current weights."""
        from ...plan import Plan, compress, load_weights

        if not state.compressed:
            return self.base_model(state.weights)
        model = compress(self.base_model(), Plan.load(state.plan), init="random")
        return load_weights(model, state.weights)

    def teacher(self) -> nn.Module:
        return self.base_model(self.base.get("checkpoint"))


def calibration_draw(p: dict) -> dict:
    """The calibration draw a ``search`` or ``decompose`` stage's options ask for: ``calib`` fit-part train/
    images (default 256) drawn with ``seed`` (default 0)."""
    return {"images": int(p.get("calib", 256)), "seed": int(p.get("seed", 0))}


def check_same_draw(draw: dict, searched: dict | None, where: str) -> None:
    """A calibrated ``decompose`` after a calibrated search must use the search's draw, or the model built
    would not be the one the search scored: one line naming both draws."""
    if searched and searched != draw:
        raise RecipeError(f"{where}: calibrated on {draw['images']} images (seed {draw['seed']}) but the "
                          f"search calibrated on {searched['images']} (seed {searched['seed']})")


def calibrated_bases(run: ClassifyRun, state: State, model: nn.Module, names: list[str]) -> dict | None:
    """The calibrated mode bases of ``names`` in the dense ``model`` when the search was calibrated
    (``search: {calibrated: true}``), on its calibration draw, so the model built is the one the search scored;
    ``None`` otherwise (weight-only bases, as before)."""
    if not state.calibration:
        return None
    from ...data import calibration_images
    from ...search.estimator import calibrated_bases as bases_on

    images, _ = calibration_images(run.split("train"), int(state.calibration["images"]), run.input_size,
                                   seed=int(state.calibration["seed"]))
    return bases_on(model, names, images)


def require(state: State, what: str, stage: str) -> None:
    """One line naming the stage that is missing before ``stage``."""
    if what == "plan" and state.plan is None:
        raise RecipeError(f"stage {stage}: needs a plan (put a 'search' or 'plan' stage before it)")
    if what == "dense" and state.compressed:
        raise RecipeError(f"stage {stage}: needs the dense model (it comes before 'decompose')")
    if what == "compressed" and not state.compressed:
        raise RecipeError(f"stage {stage}: needs the compressed model (put a 'decompose' stage before it)")


def train_config(params: Mapping[str, Any], where: str, input_size: int | None = None):
    """A :class:`TrainConfig` from recipe fields (``input_size`` defaults to the recipe's)."""
    from ...train.engine import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown training option {unknown[0]!r}")
    if input_size is not None:
        params = {"input_size": input_size, **params}
    try:
        return TrainConfig(**params)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None


def train_params(params: Mapping[str, Any]) -> dict:
    """The training fields of a stage's options (without the stage's own ones: id, teacher, sparsity ...)."""
    return {k: v for k, v in params.items() if k not in TRAIN_EXTRA}


def summary(result: dict) -> dict:
    return {k: result[k] for k in ("val_top1", "val_top5", "selection_top1", "epochs", "seconds", "world_size",
                                   "config") if k in result}


def hardware() -> dict:
    """Where the run happened, so that the seconds in the results read as CPU- or GPU-minutes."""
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {"device": "cpu", "threads": torch.get_num_threads(), "cores": os.cpu_count()}
