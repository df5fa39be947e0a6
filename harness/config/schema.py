"""Typed, validated configuration: model, datasets, recipe + calibration, thresholds. Loaded from YAML.

Every error names the key and the allowed choices. Relative paths resolve against the project root: the config's
``root:`` (relative to the config file), else the nearest folder above the config file holding ``pyproject.toml``,
else the working directory. ``builtin:`` paths point at the
embedded tiny default: ``builtin:tiny`` (model dir) and ``builtin:corpus/...`` (the seeded synthetic corpus).
No torch import.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config.locate import locate
from harness.config.messages import format_validation_error
from harness.config.sections import (CalibrationOverrides, DatasetSpec, DistributionSpec, HubSpec, ModelSpec,
                                     QuantizeSpec, RecipeRegressionSpec, Strict, TaskSpecConfig, Thresholds,
                                     check_tasks, known_backend)
from harness.limits import DISTRIBUTION_LIMITS  # threshold keys that need `distributions`
from harness.tasks import TASKS


class HarnessConfig(Strict):
    name: str = Field(description="model key: baselines live in baselines/<name>/")
    model: ModelSpec
    datasets: dict[str, DatasetSpec]
    recipe: str = Field("nvfp4", description="the CLI's recipe: recipes/<name>.yaml")
    recipes: list[str] | None = Field(None, description="recipes the pytest gate runs (default: every default "
                                                         "recipe in recipes_dir that applies to this model)")
    calibration: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's calibration")

    @field_validator("calibration")
    @classmethod
    def _calibration_keys(cls, v):
        """The overrides must be CalibrationSpec keys of the right types (checked now, not after data preparation)."""
        try:
            CalibrationOverrides.model_validate(v or {})
        except ValidationError as e:
            raise ValueError(format_validation_error(e, CalibrationOverrides, "calibration").split("\n", 1)[1]
                             .strip()) from None
        return v
    thresholds: Thresholds = Field(default_factory=Thresholds)
    backend: str = Field("hf", description="scoring backend: one of harness.backends.BACKENDS (hf, vllm)")
    batch_size: int | None = Field(None, ge=1, description="requests per scoring batch; 1 = the reference's "
                                                              "one-at-a-time evaluation; unset = all at once")
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    hub: HubSpec = Field(default_factory=HubSpec)
    token_detail: bool = Field(False, description="save per-token logprobs (compressed numpy) and summarise them")
    distributions: DistributionSpec | None = Field(
        None, description="compare whole next-token distributions with BF16 (KL divergence, top-1 agreement, Δp): "
                          "a baseline update stores BF16's top-k beside each baseline, the gate compares at the same k")
    tasks: dict[str, TaskSpecConfig] = Field(
        default_factory=dict, description="tasks scored beside perplexity in the same engine (harness/tasks): name -> "
                                          "limit, metric, recovery_min, use, flips_max_pct, source; known: "
                                          + ", ".join(TASKS))

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v):
        return check_tasks(v or {})

    recipe_regression: RecipeRegressionSpec | None = Field(
        None, description="fail a recipe that is worse than the stored result of the best recipe, on the same "
                          "documents (paired bootstrap)")
    require_kernel: str | None = Field(None, description="refuse NVFP4 results from any other kernel (e.g. 'W4A4')")
    prepare_beside_engine: bool | None = Field(
        None, description="a gate whose checkpoint is ready (cached or existing) prepares its data in a process of "
                          "its own while it starts the engine, and checks the data against the baselines once both "
                          "are done; unset = a backend without a GPU (hf) on two or more CPU cores, in a process "
                          "that has not loaded transformers yet (a fresh `harness gate`); on the H200 vLLM's start "
                          "slowed by as much as the overlap saved, so vLLM prepares first unless this is true")
    fidelity: Literal["scheme", "this-gpu"] = Field(
        "scheme", description="which NVFP4 numerics to measure on a GPU without FP4 units (harness/fidelity.py): "
                              "scheme = the checkpoint's W4A4 as written (vLLM W4A4 emulation); this-gpu = what vLLM "
                              "serves here (Marlin W4A16 on Hopper, activations not quantized)")
    baselines_dir: str = "baselines"
    recipes_dir: str = "recipes"
    reports_dir: str = "reports"
    cache_dir: str | None = Field(None, description="quantized-checkpoint cache (default $HARNESS_CACHE or "
                                                   "~/.cache/harness)")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return known_backend(v)

    # set by load_config, not by the file
    source_path: str | None = Field(None, exclude=True)
    root: str | None = Field(None, exclude=True, description="the project root, relative to this file: relative paths "
                             "(baselines, reports, recipes, data) resolve against it; default: the nearest folder "
                             "above this file holding pyproject.toml, else the working directory")
    fallback_baselines_dir: str | None = Field(None, exclude=True)  # read-only: the shipped tiny baselines

    @model_validator(mode="after")
    def _check(self):
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is required")
        limits = [k for k in DISTRIBUTION_LIMITS if getattr(self.thresholds, k) is not None]
        if limits and self.distributions is None:
            raise ValueError(f"thresholds.{limits[0]} needs the next-token distributions: add `distributions: "
                             "{top_k: 20}` to the config (and update the baselines), or drop the threshold")
        for ds in self.thresholds.datasets:
            if ds not in self.datasets:
                raise ValueError(f"thresholds.datasets: unknown dataset {ds!r}; known: {', '.join(self.datasets)}")
        for name, d in self.datasets.items():
            if self.model.max_model_len - d.truncation_margin < d.min_tokens:
                raise ValueError(f"datasets.{name}: max_model_len {self.model.max_model_len} - truncation_margin "
                                 f"{d.truncation_margin} is below min_tokens {d.min_tokens}; raise model.max_model_len")
        return self

    # ---- resolution helpers -------------------------------------------------
    def resolve(self, p: str | None, local: bool = False) -> str | None:
        return resolve_path(p, Path(self.root or "."), local)

    def resolve_local(self, p: str | None) -> str | None:
        """A config value that can only be a local path (dirs, data files, cache locations)."""
        return self.resolve(p, local=True)

    def locate(self, p: str):
        """Where ``p`` lives (local path, hub id or builtin), by harness.config.locate's rule."""
        return locate(p, Path(self.root or "."))

    def resolve_files(self, files: str | list[str] | None) -> str | list[str] | None:
        """``data_files`` (one path or a list) with builtin: and relative paths resolved."""
        if files is None:
            return None
        return [self.resolve_local(f) for f in files] if isinstance(files, list) else self.resolve_local(files)

    def path_of(self, key: str) -> Path:
        return Path(self.resolve_local(getattr(self, key)))

    def engine_kwargs(self, precision: str, backend: str) -> dict:
        return dict(self.model.engine.get(precision, {}).get(backend, {}))

    def cache_path(self) -> Path:
        c = self.cache_dir or os.environ.get("HARNESS_CACHE") or str(Path.home() / ".cache" / "harness")
        return Path(self.resolve_local(c))


def resolve_path(p: str | None, root: Path, local: bool = False) -> str | None:
    """A local path made absolute (``builtin:`` ones too), or a hub id unchanged: harness.config.locate's one rule
    (``local=True``: something that can only be a path)."""
    if p is None:
        return None

    return locate(p, root, local=local).path
