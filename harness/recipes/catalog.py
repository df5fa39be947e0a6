"""Recipes as data: ``recipes/<name>.yaml`` holds an llm-compressor recipe plus harness metadata.

A recipe name is looked up in the project's recipes_dir first, then among the recipes the package ships (nvfp4,
nvfp4a16, negative-control-w2): a project needs a recipes folder only for recipes of its own, and one of the same
name replaces the shipped one."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from harness.config.bundled import bundled_dir
from harness.config.messages import format_validation_error
from harness.config.sections import CalibrationSpec, Strict
from harness.errors import ConfigError, unknown_name


def recipe_id(recipe_text: str) -> str:
    """A recipe's short name by content: the first 12 hex digits of the sha256 of its text (cache listings, the
    quantization ledger, stored recipe results)."""
    return hashlib.sha256(recipe_text.encode()).hexdigest()[:12]


class RecipeFile(Strict):
    name: str
    description: str = ""
    scheme: str = Field(description="scheme the checkpoint must have: NVFP4, NVFP4A16, ... (checked after quantizing)")
    recipe: str | dict[str, Any] = Field(description="llm-compressor recipe (YAML text or mapping) for oneshot(recipe=...)")
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    thresholds: dict[str, float] = Field(default_factory=dict, description="overall / per-dataset min scores, and "
                                         "kld_mean_max / top1_min for configs with distributions")
    models: list[str] = Field(default_factory=list, description="config names it applies to (empty: all)")
    default: bool = Field(True, description="part of the default recipe set (negative controls are not)")

    @property
    def recipe_text(self) -> str:
        return self.recipe if isinstance(self.recipe, str) else yaml.safe_dump(self.recipe, sort_keys=False)


def recipe_dirs(recipes_dir: Path) -> list[Path]:
    """Where recipe names are looked up, first match wins: the project's folder, then the shipped recipes."""
    dirs = [Path(recipes_dir)]
    shipped = bundled_dir("recipes")
    if shipped is not None and shipped.resolve() != Path(recipes_dir).resolve():
        dirs.append(shipped)
    return dirs


def recipe_path(recipes_dir: Path, name: str) -> Path | None:
    return next((d / f"{name}.yaml" for d in recipe_dirs(recipes_dir) if (d / f"{name}.yaml").exists()), None)


def recipe_names(recipes_dir: Path) -> list[str]:
    return sorted({p.stem for d in recipe_dirs(recipes_dir) for p in d.glob("*.yaml")})


def load_recipe(recipes_dir: Path, name: str) -> RecipeFile:
    path = recipe_path(recipes_dir, name)
    if path is None:
        raise unknown_name("recipe", name, recipe_names(recipes_dir))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: not valid YAML: {e}") from None
    try:
        r = RecipeFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, RecipeFile, str(path))) from None
    if r.name != name:
        raise ConfigError(f"recipe {path}: name {r.name!r} differs from the file name {name!r}")
    try:
        yaml.safe_load(r.recipe_text)
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: the llm-compressor recipe is not valid YAML: {e}") from None
    return r


def default_recipes(recipes_dir: Path, model: str) -> list[str]:
    """Recipes in the default set that apply to this model (negative controls are left out)."""
    out = []
    for name in recipe_names(recipes_dir):
        r = load_recipe(recipes_dir, name)
        if r.default and (not r.models or model in r.models):
            out.append(name)
    if not out:
        raise ConfigError(f"no default recipe in {recipes_dir} applies to model {model!r}; add one or pass --recipe")
    return out
