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
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.backends import BACKENDS  # the one backend registry (light: no torch, no vllm)
from harness.errors import ConfigError, unknown_name
from harness.stages.judge import LIMITS  # the distribution limits: threshold keys that need `distributions`
from harness.config.messages import format_validation_error

PRECISIONS = ("bf16", "nvfp4")


def one_of(what: str, v: str, names, more: str = "") -> str:
    """``v`` if it is one of ``names``; else the config error that lists them (and ``more``)."""
    if v not in names:
        raise ValueError(f"unknown {what} {v!r}; choose from {', '.join(names)}{more}")
    return v


def known_backend(v: str) -> str:
    """``v`` if a backend of that name is registered; else the error that says which are, and which are installed."""
    if v not in BACKENDS:  # what is installed is looked up only for the error
        one_of("backend", v, BACKENDS, f" ({BACKENDS.describe()})")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SourceSpec(Strict):
    path: str = Field(description="hub dataset id (e.g. 'wikitext'), a builder with data_files ('parquet', 'json'), "
                                  "or a saved dataset dir")
    name: str | None = Field(None, description="dataset config name, e.g. 'wikitext-2-raw-v1'")
    split: str = Field(description="split, e.g. 'test' or 'test_sft'")
    revision: str | None = Field(None, description="hub revision (commit sha or tag) to pin")
    data_files: str | list[str] | None = Field(None, description="local files in the hub schema")


class DatasetSpec(Strict):
    rule: str = Field(description="text rule: which sampling rule builds the texts (harness.data.RULES: wikitext, "
                                  "ultrachat)")
    source: SourceSpec
    n_texts: int = Field(200, gt=0, description="first N (non-empty) texts")
    min_tokens: int = Field(16, ge=2, description="texts with fewer tokens are dropped")
    truncation_margin: int = Field(8, ge=0, description="texts are truncated to max_model_len - margin tokens")
    min_kept_texts: int = Field(1, ge=1, description="fail the run if fewer texts survive the rules")


    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v: str) -> str:
        from harness.data import RULES

        return one_of("rule", v, RULES)


class CalibrationSpec(Strict):
    path: str = "HuggingFaceH4/ultrachat_200k"
    name: str | None = None
    split: str = "train_sft"
    revision: str | None = None
    data_files: str | list[str] | None = None
    text_field: str = "messages"
    skip: int = Field(0, ge=0, description="rows skipped from the start before sampling: keeps calibration rows apart "
                                            "from the scored ones when both come from one file")
    samples: int = Field(512, gt=0)
    max_seq_len: int = Field(2048, gt=0)
    seed: int = 42


class CalibrationOverrides(Strict):
    """A config's ``calibration``: any CalibrationSpec key, each optional, with the same types and ranges."""

    path: str | None = None
    name: str | None = None
    split: str | None = None
    revision: str | None = None
    data_files: str | list[str] | None = None
    text_field: str | None = None
    skip: int | None = Field(None, ge=0)
    samples: int | None = Field(None, gt=0)
    max_seq_len: int | None = Field(None, gt=0)
    seed: int | None = None


class Thresholds(Strict):
    overall: float = Field(99.0, gt=0, le=200, description="minimum overall relative score")
    datasets: dict[str, Annotated[float, Field(gt=0, le=200)]] = Field(
        default_factory=dict, description="minimum relative score per dataset (the same range as overall)")
    use: Literal["point", "lower"] = Field("point", description="gate on the point estimate or the bootstrap lower bound")
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = 0
    kld_mean_max: float | None = Field(None, gt=0, description="largest mean KL(BF16 || quantized) in nats over the "
                                       "scored tokens, per dataset and overall (needs `distributions`)")
    top1_min: float | None = Field(None, gt=0, le=100, description="smallest top-1 agreement with BF16 in percent, "
                                   "per dataset and overall (needs `distributions`)")


class RecipeRegressionSpec(Strict):
    """Every recipe gated must not be worse than the stored result of the best recipe (harness/recipes/records.py)."""

    best: str = Field(description="the recipe whose stored result (<baselines_dir>/<name>/recipes/<best>.json, "
                                  "written by --record-recipe) every gated recipe is paired with")
    margin: float = Field(0.0, ge=0, le=100, description="score points a recipe may lose against the best: it fails "
                                                         "when the whole paired interval of (recipe - best) is below "
                                                         "-margin")


class DistributionSpec(Strict):
    """Whole next-token distributions against BF16 (harness/divergence.py); on when the config has this section."""

    top_k: int = Field(20, ge=1, le=1000, description="next tokens kept per scored position (vLLM prompt_logprobs=k); "
                                                       "above 20, vLLM needs max_logprobs >= top_k")


class TaskSource(Strict):
    """Where a task's rows come from instead of the shipped split: the hub (the task's own id, or another) or local
    files in the hub schema."""

    path: str = Field(description="hub dataset id (e.g. allenai/ai2_arc), or a builder ('json', 'parquet') with "
                                  "data_files")
    name: str | None = Field(None, description="dataset config name, e.g. ARC-Easy")
    split: str = Field(description="split, e.g. 'test' or 'validation'")
    revision: str | None = Field(None, description="hub revision (commit sha or tag) to pin")
    data_files: str | list[str] | None = Field(None, description="local files in the hub schema (JSON lines: a "
                                                                 "malformed row is named by file:line)")


class TaskSpecConfig(Strict):
    """One task of a config's ``tasks`` (harness/tasks/definitions.py): how many items, which metric is gated and
    how. The gate reports every metric of the task, flips both ways and McNemar's p beside the perplexity tables."""

    limit: int | None = Field(None, gt=0, description="the first N items; unset = the whole split")
    metric: str | None = Field(None, description="the metric gated (default: the task's first: acc_norm for arc and "
                                                 "hellaswag, acc for piqa, winogrande and lambada, exact_match for "
                                                 "gsm8k)")
    recovery_min: float = Field(0.95, ge=0, le=1, description="smallest quantized / BF16 accuracy (llm-compressor's "
                                                              "recovery)")
    use: Literal["point", "lower"] = Field("point", description="gate recovery on the point estimate or the paired "
                                                                "bootstrap's lower bound")
    flips_max_pct: float | None = Field(None, ge=0, le=100, description="largest share of items whose correctness "
                                                                        "flipped (either way), in percent")
    source: TaskSource | None = Field(None, description="rows from here instead of the shipped split")
    task: str | None = Field(None, description="the task this entry runs when its key is a name of its own (e.g. "
                                               "hellaswag_card: {task: hellaswag, style: lighteval}); default: the key")
    style: str = Field("lm-eval", description="whose prompts: lm-eval (default) or lighteval (arc, piqa, hellaswag "
                                              "as the SmolLM2 model cards were scored)")
    chat_template: bool = Field(False, description="each context as one user turn of the tokenizer's chat template, "
                                                   "the continuation after its assistant prompt (lighteval's "
                                                   "--use_chat_template); log-likelihood tasks only")

    def definition(self, key: str) -> str:
        return self.task or key


def check_tasks(tasks: dict) -> dict:
    """Known task names (or ``task:``), a style the task has, and per task a metric it has (the errors list the known
    ones)."""
    from harness.tasks import TASKS
    from harness.tasks.definitions import styled_spec

    for key, t in tasks.items():
        name = t.definition(key)
        if name not in TASKS:
            where = f"tasks.{key}.task: " if t.task else ""
            raise ValueError(where + str(unknown_name("task", name, TASKS)))
        try:
            spec = styled_spec(name, t.style)
        except ValueError as e:
            raise ValueError(f"tasks.{key}.style: {e}") from None
        if t.chat_template and spec.kind == "generate":
            raise ValueError(f"tasks.{key}.chat_template: {name} is generated from few-shot examples, which are not "
                             "built as chat turns here; the chat template is for log-likelihood tasks")
        gated = [m for m in spec.metrics if m != "perplexity"]
        if t.metric is not None and t.metric not in gated:
            raise ValueError(f"tasks.{key}.metric: unknown metric {t.metric!r}; choose from {', '.join(gated)}")
    return tasks


class ModelSpec(Strict):
    path: str = Field(description="hub id, local dir, or builtin:tiny")
    revision: str | None = None
    tokenizer: str | None = None
    max_model_len: int = Field(2048, gt=0)
    add_special_tokens: bool = Field(
        True, description="tokenize texts with the tokenizer's special tokens (Llama, Mistral, Gemma prepend BOS, "
                          "which becomes the unscored first token, so every text token is scored; Qwen adds none); "
                          "false: the text's own tokens only, the first of which goes unscored. Part of the data "
                          "fingerprint")
    trust_remote_code: bool = False
    checkpoint: str | None = Field(None, description="an existing quantized checkpoint (local dir or hub id) to gate "
                                                     "as it is, instead of quantizing model.path with the recipe")
    engine: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="engine kwargs: precision (bf16|nvfp4) -> backend (hf|vllm) -> kwargs")

    @field_validator("engine")
    @classmethod
    def _engine_keys(cls, v):
        for prec, per_backend in v.items():
            if prec not in PRECISIONS:
                raise ValueError(f"unknown precision {prec!r}; choose from {', '.join(PRECISIONS)}")
            for b, kwargs in per_backend.items():
                try:
                    known_backend(b)
                except ValueError as e:
                    raise ValueError(f"engine.{prec}: {e}") from None
                from harness.backends.engine_args import check_engine_kwargs

                try:
                    check_engine_kwargs(b, kwargs or {}, where=f"engine.{prec}.{b}")
                except ConfigError as e:
                    raise ValueError(str(e)) from None
        return v


class HubSpec(Strict):
    """Where Hugging Face files live and whether to go online; unset keys leave the environment as it is."""

    offline: bool | None = Field(None, description="HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE")
    hf_home: str | None = Field(None, description="HF_HOME")
    hub_cache: str | None = Field(None, description="HUGGINGFACE_HUB_CACHE (models)")
    datasets_cache: str | None = Field(None, description="HF_DATASETS_CACHE")
    tmpdir: str | None = Field(None, description="TMPDIR (large temporary files)")

    def environment(self, resolve) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.offline is not None:
            v = "1" if self.offline else "0"
            env.update(HF_HUB_OFFLINE=v, HF_DATASETS_OFFLINE=v, TRANSFORMERS_OFFLINE=v)
        for key, var in (("hf_home", "HF_HOME"), ("hub_cache", "HUGGINGFACE_HUB_CACHE"),
                         ("datasets_cache", "HF_DATASETS_CACHE"), ("tmpdir", "TMPDIR")):
            if getattr(self, key):
                env[var] = resolve(getattr(self, key))
                if var == "HUGGINGFACE_HUB_CACHE":
                    env["HF_HUB_CACHE"] = env[var]
        return env


def apply_hub_environment(env: dict[str, str]) -> None:
    """Set the variables for this process and its children (the quantization interpreter), and update the
    libraries' module-level copies where they were imported already."""
    import sys

    os.environ.update(env)
    if "TMPDIR" in env:
        import tempfile

        tempfile.tempdir = None
    hh = sys.modules.get("huggingface_hub.constants")
    if hh is not None and "HF_HUB_OFFLINE" in env:
        hh.HF_HUB_OFFLINE = env["HF_HUB_OFFLINE"] == "1"
    dc = sys.modules.get("datasets.config")
    if dc is not None:
        if "HF_DATASETS_OFFLINE" in env:
            dc.HF_HUB_OFFLINE = env["HF_DATASETS_OFFLINE"] == "1"
        if "HF_DATASETS_CACHE" in env:
            from pathlib import Path as _P

            dc.HF_DATASETS_CACHE = _P(env["HF_DATASETS_CACHE"])


class QuantizeSpec(Strict):
    python: str | None = Field(None, description="interpreter with llmcompressor (default: this one)")
    pythonpath: str | None = Field(None, description="extra PYTHONPATH for that interpreter")
    timeout_s: float | None = Field(None, gt=0, description="stop quantization after this long (default: no limit; "
                                                             "a 72B model takes about an hour on one H200)")
    heartbeat_s: float = Field(60.0, gt=0, description="say how far quantization got this often")
    device_map: Literal["auto_offload", "auto"] | None = Field(
        None, description="how the quantization child holds the BF16 model: unset = all of it in CPU RAM (2 bytes a "
                          "parameter: 145 GB for 72B); auto_offload = what fits in CPU RAM, the rest on disk; auto = "
                          "GPUs, then CPU RAM, then disk (docs/scale.md, 'Quantization memory')")
    lock_timeout_s: float | None = Field(4 * 3600, gt=0, description="give up waiting for another process building "
                                                                      "the same checkpoint after this long")
    cpu_matmul: Literal["fp32", "native"] = Field(
        "fp32", description="calibration of a bf16 model on a CPU: fp32 computes its linear layers and matmuls in "
                            "float32, each result rounded to bf16 (~2x faster builds on CPUs without bf16 units); "
                            "native keeps torch's bf16 kernels. No effect on GPUs")


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
                                          "limit, metric, recovery_min, use, flips_max_pct, source; known: arc_easy, "
                                          "arc_challenge, piqa, hellaswag, winogrande, lambada_openai, gsm8k")

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
    cache_dir: str | None = Field(None, description="quantized-checkpoint cache (default $HARNESS_CACHE or ~/.cache/harness)")

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
        limits = [k for k in LIMITS if getattr(self.thresholds, k) is not None]
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
        from harness.config.locate import locate

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
    from harness.config.locate import locate

    return locate(p, root, local=local).path


def project_of(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``pyproject.toml`` (None: none)."""
    start = start.resolve()
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").exists():
            return d
    return None


def find_root(start: Path) -> Path:
    """The project a path belongs to: :func:`project_of`, else the working directory (never the config's own folder:
    a project without pyproject.toml keeps its baselines and reports where it runs, not under configs/)."""
    return project_of(start) or Path.cwd().resolve()


def default_config_path() -> Path:
    """The embedded tiny default: configs/tiny.yaml of the project in the cwd, else the one the package ships."""
    from harness.config.bundled import bundled_dir

    cand = find_root(Path.cwd()) / "configs" / "tiny.yaml"
    if cand.exists():
        return cand
    shipped = bundled_dir("configs")
    if shipped is not None and (shipped / "tiny.yaml").exists():
        return shipped / "tiny.yaml"
    raise ConfigError("no --config given, no configs/tiny.yaml in this project and none shipped with the harness "
                      "(a broken install? reinstall nvfp4-gate); pass --config PATH")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> HarnessConfig:
    implicit = not path
    path = Path(path) if path else default_config_path()
    if not path.exists():
        raise ConfigError(f"config file {path} not found; see configs/ for examples (configs/tiny.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    from harness.config.overrides import set_dotted

    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    try:
        cfg = HarnessConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, HarnessConfig, str(path))) from None
    cfg.source_path = str(path.resolve())
    declared = data.get("root")
    cfg.root = str((path.parent / os.path.expanduser(declared)).resolve()) if declared else str(find_root(path.parent))
    from harness.config.bundled import bundled_dir, is_inside_package

    if implicit and is_inside_package(path) and project_of(path.parent) != find_root(Path.cwd()):
        # the shipped default run from a user's project: outputs (reports, new baselines) go to that project; the
        # shipped tiny baselines are read when the project has none of its own
        cfg.root = str(find_root(Path.cwd()))
        if "baselines_dir" not in data:
            cfg.fallback_baselines_dir = str(bundled_dir("baselines"))
    return cfg


def check_dataset_names(cfg: HarnessConfig, names) -> None:
    for n in names:
        if n not in cfg.datasets:
            raise unknown_name("dataset", n, cfg.datasets)
