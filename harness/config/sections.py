"""The config's sections: model, datasets, calibration, thresholds, tasks, hub, quantization (pydantic models, strict:
an unknown key is an error that names the known ones). harness.config.schema puts them together. No torch import."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.backends import BACKENDS  # the one backend registry (light: no torch, no vllm)
from harness.backends.engine_args import check_engine_kwargs
from harness.data.rules import RULES
from harness.errors import ConfigError, unknown_name
from harness.limits import LIMITS
from harness.precision import PRECISIONS
from harness.tasks import TASKS
from harness.tasks.definitions import styled_spec


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
    rule: str = Field(description="text rule: which sampling rule builds the texts (harness.data.rules.RULES: wikitext, "
                                  "ultrachat)")
    source: SourceSpec
    n_texts: int = Field(200, gt=0, description="first N (non-empty) texts")
    min_tokens: int = Field(16, ge=2, description="texts with fewer tokens are dropped")
    truncation_margin: int = Field(8, ge=0, description="texts are truncated to max_model_len - margin tokens")
    min_kept_texts: int = Field(1, ge=1, description="fail the run if fewer texts survive the rules")


    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v: str) -> str:
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
    overall: float = Field(LIMITS["score"].default, gt=0, le=200, description="minimum overall relative score")
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
    recovery_min: float = Field(LIMITS["recovery_min"].default, ge=0, le=1, description="smallest quantized / BF16 accuracy (llm-compressor's "
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
    os.environ.update(env)
    if "TMPDIR" in env:
        tempfile.tempdir = None
    hh = sys.modules.get("huggingface_hub.constants")
    if hh is not None and "HF_HUB_OFFLINE" in env:
        hh.HF_HUB_OFFLINE = env["HF_HUB_OFFLINE"] == "1"
    dc = sys.modules.get("datasets.config")
    if dc is not None:
        if "HF_DATASETS_OFFLINE" in env:
            dc.HF_HUB_OFFLINE = env["HF_DATASETS_OFFLINE"] == "1"
        if "HF_DATASETS_CACHE" in env:
            dc.HF_DATASETS_CACHE = Path(env["HF_DATASETS_CACHE"])


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
