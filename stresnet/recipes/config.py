"""Recipe files: YAML, ``--set`` overrides, ``${shared}`` / ``${env:NAME}`` variables, the checks every task shares.

The task-specific checks (stage options, training fields) belong to the task (:mod:`.tasks`);
this module only knows the header and the shape of a stage list.
"""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["RECIPE_FORMAT", "RecipeError", "shared_dir", "weights_registry_out", "read_recipe", "check_header", "stage_list", "input_path"]

RECIPE_FORMAT = "stresnet-recipe/1"


class RecipeError(ValueError):
    """A recipe that cannot run: the one-line message names the file, stage and field."""


def shared_dir() -> Path:
    """``$STRESNET_SHARED``, else ``../shared`` of the current folder (recipes are run from the repo root)."""
    env = os.environ.get("STRESNET_SHARED")
    return Path(env) if env else Path.cwd().parent / "shared"


def weights_registry_out() -> Path:
    """Where ``publish`` records weights: ``$STRESNET_WEIGHTS_REGISTRY``, else the checkout's
    ``stresnet/zoo/weights.json`` when run from a stresnet checkout (the maintainers' workflow: the
    registry ships with the package), else ``./weights.json``; never inside an installed package."""
    env = os.environ.get("STRESNET_WEIGHTS_REGISTRY")
    if env:
        return Path(env)
    checkout = Path("stresnet/zoo/weights.json")
    return checkout if checkout.is_file() else Path("weights.json")


def input_path(path: str | Path) -> Path:
    """A file a recipe reads (a plan, an expected plan): absolute, else relative to the current folder, else
    (``stresnet/zoo/plans/...`` from outside the repo) the installed package's own copy."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not path.parts or path.parts[0] != "stresnet":
        return path
    packaged = Path(str(resources.files("stresnet").joinpath(*path.parts[1:])))
    return packaged if packaged.exists() else path


_VAR = re.compile(r"\$\{([^}]+)\}")


def _substitute(value: Any, source: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key == "shared":
                return str(shared_dir())
            if key.startswith("env:"):
                if key[4:] not in os.environ:
                    raise RecipeError(f"{source}: environment variable {key[4:]} (used as ${{{key}}}) is not set")
                return os.environ[key[4:]]
            raise RecipeError(f"{source}: unknown variable ${{{key}}} (use ${{shared}} or ${{env:NAME}})")
        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, source) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, source) for k, v in value.items()}
    return value


def _apply_override(recipe: dict, assignment: str, source: str) -> None:
    """``a.b.c=value`` (YAML-parsed value); a number indexes a list: ``stages.2.finetune.epochs=1``."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise RecipeError(f"{source}: --set {assignment!r} is not KEY=VALUE")
    node: Any = recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{source}: --set {key}: {part!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = yaml.safe_load(raw)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = yaml.safe_load(raw)
            else:
                node = node.setdefault(part, {})
        else:
            raise RecipeError(f"{source}: --set {key}: {parts[i - 1]!r} holds a value, not a mapping or list")


def _merged(base: dict, own: dict) -> dict:
    """``own`` over ``base``: mappings merge key by key, anything else (a list of stages too) replaces."""
    out = dict(base)
    for key, value in own.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """One recipe file as a mapping; ``extends: other.yaml`` (relative to this file) starts from that recipe, so
    that a variant (another base, another budget) states only what differs and cannot drift from its original."""
    import yaml

    if not path.is_file():
        raise RecipeError(f"recipe {path}: no such file" if not seen else f"recipe {seen[-1]}: extends {path}, "
                          f"which does not exist")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    parent = recipe.pop("extends", None)
    if parent is None:
        return recipe
    parent = path.parent / str(parent)
    if parent.resolve() in {p.resolve() for p in (*seen, path)}:
        raise RecipeError(f"recipe {path}: extends {parent}, which extends it back")
    return _merged(_load_yaml(parent, (*seen, path)), recipe)


def read_recipe(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Read (following ``extends``), override (``key.sub=value``) and substitute variables; the task's checks come
    after (:func:`stresnet.recipes.tasks.load_recipe`)."""
    path = Path(path)
    recipe = _load_yaml(path)
    for assignment in overrides:
        _apply_override(recipe, assignment, str(path))
    recipe = _substitute(recipe, str(path))
    recipe["_path"] = str(path)
    return recipe


def check_header(recipe: dict, source: str, required: tuple[str, ...]) -> None:
    """The checks every recipe kind shares: format tag, required fields, a name usable as a file name."""
    if recipe.get("format", RECIPE_FORMAT) != RECIPE_FORMAT:
        raise RecipeError(f"{source}: format {recipe.get('format')!r} is not {RECIPE_FORMAT}")
    for key in required:
        if key not in recipe:
            raise RecipeError(f"{source}: missing required field {key!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(recipe["name"])):
        raise RecipeError(f"{source}: name {recipe['name']!r} must be a plain file name")


def stage_list(stages: Any, where: str, known: Mapping[str, Any] | tuple[str, ...],
               label: str = "stage") -> list[tuple[str, dict]]:
    """Parse a YAML stage list into ``(kind, params)`` pairs; one line naming the bad entry otherwise."""
    if not isinstance(stages, list) or not stages:
        raise RecipeError(f"{where}: expected a non-empty list of stages")
    out = []
    for i, item in enumerate(stages):
        if not (isinstance(item, dict) and len(item) == 1):
            raise RecipeError(f"{where}[{i}]: a stage is a one-key mapping like '- finetune: {{epochs: 2}}'")
        (kind, params), = item.items()
        if kind not in known:
            raise RecipeError(f"{where}[{i}]: unknown {label} {kind!r} (known: {', '.join(known)})")
        if params is not None and not isinstance(params, dict):
            raise RecipeError(f"{where}[{i}].{kind}: options must be a mapping, got {params!r}")
        out.append((kind, dict(params or {})))
    return out
