"""The keyword arguments a vLLM engine starts with: the config's ``model.engine.<precision>.vllm`` checked against this
vLLM's EngineArgs, the harness's scoring defaults (eager, prefix caching for task requests), the logprobs a top-k
needs, parallelism checked against the visible GPUs, the fidelity's linear backend and a BF16 view's load format."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from harness import fidelity
from harness.backends.base import EngineSpec
from harness.backends.data_parallel import parallel_sizes
from harness.backends.engine_args import VLLM_DROPPED, check_engine_kwargs
from harness.backends.gpu_memory import visible_gpus
from harness.checkpoint import checkpoint_quantization, view_source
from harness.errors import BackendError, ConfigError
from harness.precision import BF16

EXTENSION = "harness.backends.vllm_loader.HarnessWorkerExtension"
DEFAULT_MAX_LOGPROBS = 20  # vLLM's max_logprobs unless set: a larger EngineSpec.top_k raises it for that engine
# Prompt scoring never decodes: the engines start without torch.compile and CUDA-graph capture unless the config
# says how to compile (enforce_eager, compilation_config or optimization_level). Measured on one H200 with real
# SmolLM2 weights: a cached gate 87 s compiled -> 41 s eager; BF16 PPL compiled 0.14% from transformers, eager 0.02%
# (docs/results, 2026-11-27/29). What the harness chose is in the engine info (harness_defaults).
SCORING_DEFAULTS = {"enforce_eager": True}
SHARED_CONTEXTS_DEFAULT = {"enable_prefix_caching": True}  # read only by task requests (loglikelihood)
COMPILE_KEYS = ("enforce_eager", "compilation_config", "optimization_level")


def engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def split_kwargs(kwargs: dict, available: set[str]) -> tuple[dict, list[str]]:
    """Validate engine kwargs against this vLLM's EngineArgs: unknown keys are an error; keys the harness knows
    that this vLLM dropped (``swap_space``) are removed and returned."""
    check_engine_kwargs("vllm", kwargs, where="model.engine.<precision>.vllm", fields=available)
    dropped = sorted(k for k in kwargs if k in VLLM_DROPPED and k not in available)
    return {k: v for k, v in kwargs.items() if k not in dropped}, dropped


def scoring_defaults(kwargs: dict, available: set[str]) -> dict:
    """The SCORING_DEFAULTS this engine gets: none of the compile settings when the config names any of them."""
    if any(k in kwargs for k in COMPILE_KEYS):
        return {}
    return {k: v for k, v in SCORING_DEFAULTS.items() if k in available}


def check_parallel(kwargs: dict) -> None:
    """Tensor x pipeline parallelism on this host needs that many visible GPUs: say so before vLLM starts (it
    would wait for GPUs that never come, or fail deep in a worker). Ray places workers across its own cluster."""
    dp, per_engine = parallel_sizes(kwargs)
    if dp > 1:
        raise ConfigError("data_parallel_size > 1 is run by the harness (one engine per GPU group): start the "
                          "backend with harness.backends.make_backend, not VLLMBackend")
    executor = kwargs.get("distributed_executor_backend")
    if per_engine > 1 and executor in (None, "mp"):
        visible = visible_gpus()
        if per_engine > len(visible):
            raise ConfigError(
                f"tensor_parallel_size x pipeline_parallel_size = {per_engine} GPUs, but this host shows "
                f"{len(visible)} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Lower "
                "them, or spread the engine over several hosts with distributed_executor_backend: ray "
                "(docs/multi-gpu.md, 'Across hosts (Ray)').")


def fidelity_kwargs(spec: EngineSpec, kwargs: dict) -> tuple[dict, dict | None]:
    """A W4A4 checkpoint on a GPU without FP4 units runs as the config's ``fidelity`` says (harness/fidelity.py)."""
    if spec.precision == BF16 or not Path(spec.model, "config.json").is_file():
        return kwargs, None
    import torch


    cap = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    return fidelity.choose(spec.fidelity, checkpoint_quantization(spec.model), cap, kwargs)


def view_kwargs(spec: EngineSpec, kwargs: dict) -> dict:
    """A BF16 view of an NVFP4 checkpoint loads through the harness's load format, registered in the workers
    by the harness's worker extension."""
    if view_source(spec.model) is None:
        return kwargs
    from harness.backends.vllm_loader import LOAD_FORMAT

    theirs = kwargs.get("worker_extension_cls")
    if theirs and theirs != EXTENSION:
        raise BackendError(f"{spec.model} is a BF16 view (harness_view.json), which needs worker_extension_cls "
                           f"{EXTENSION}; the config sets {theirs!r}")
    return {**kwargs, "load_format": kwargs.get("load_format", LOAD_FORMAT), "worker_extension_cls": EXTENSION}


def engine_kwargs(spec: EngineSpec, available: set[str]) -> tuple[dict, list[str], dict, dict | None]:
    """(kwargs for vllm.LLM, the config's keys this vLLM dropped, the harness's defaults among the kwargs, the
    fidelity's choice): everything decided before the engine starts."""
    kwargs, dropped = split_kwargs(dict(spec.engine_kwargs), available)
    shared = {k: v for k, v in SHARED_CONTEXTS_DEFAULT.items() if k in available and k not in kwargs}
    defaults = {**scoring_defaults(kwargs, available), **shared}
    kwargs = {**defaults, **kwargs}
    if spec.top_k > DEFAULT_MAX_LOGPROBS:  # vLLM refuses prompt_logprobs above the engine's max_logprobs
        kwargs.setdefault("max_logprobs", spec.top_k)
    check_parallel(kwargs)
    kwargs, fidelity = fidelity_kwargs(spec, kwargs)
    return view_kwargs(spec, kwargs), dropped, defaults, fidelity
