"""The environment a vLLM engine starts in, and what its log says about the start. No vllm or torch import at
module level.

- CPU weight offload: vLLM 0.26's default (V2) model runner ignores ``cpu_offload_gb`` / ``offload_backend`` for
  dense models without a word; the V1 runner honours them. An engine that asks for offload is started with
  ``VLLM_USE_V2_MODEL_RUNNER=0`` (only that engine: the variable is restored once its processes are spawned), and
  the backend then checks that weights really left the GPU.
- The engine core runs in this interpreter (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) when the engine is eager, on one
  GPU and without offload, and the environment does not say otherwise: no second interpreter to start and import
  vLLM and torch into (a cached SmolLM2 gate on one H200: 41 s -> 25 s to verdict, the same score; docs/results
  2026-11-30).
  vLLM 0.26 supports tearing such an engine down in process (``EngineCore.shutdown``: gc.unfreeze, distributed
  state and cached memory released). Compiled, several-GPU and offloading engines keep their own processes.
- The engine's own log (engine-core and worker processes, or this process's ``vllm`` logger when the core runs
  here) is also written to a file, from which :func:`parse_engine_log` reads where the engine-start seconds went
  (weights, model load, profile + KV cache).
"""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from harness.errors import BackendError, ConfigError

OFFLOAD_KEYS = ("cpu_offload_gb", "offload_backend", "offload_group_size", "offload_num_in_group",
                "offload_prefetch_step", "offload_params", "cpu_offload_params")


def offload_requested(kwargs: dict) -> dict | None:
    """The offload settings of these engine kwargs, or None when they ask for no CPU offload."""
    backend = kwargs.get("offload_backend", "auto")
    gb = float(kwargs.get("cpu_offload_gb") or 0)
    group = int(kwargs.get("offload_group_size") or 0)
    if backend in ("uva", "prefetch") or (backend == "auto" and (gb > 0 or group > 0)):
        return {k: kwargs[k] for k in OFFLOAD_KEYS if k in kwargs}
    return None


IN_PROCESS_VAR = "VLLM_ENABLE_V1_MULTIPROCESSING"


def engine_core_in_process(kwargs: dict) -> bool:
    """Whether this engine's core runs in this interpreter: as ``VLLM_ENABLE_V1_MULTIPROCESSING`` says when it is
    set, else (the harness's default) for an eager engine of one GPU that offloads nothing. A compiled engine keeps
    its own process: torch.compile's and Dynamo's state would otherwise outlive it in this interpreter."""
    if os.environ.get(IN_PROCESS_VAR) is not None:
        return os.environ[IN_PROCESS_VAR].strip().lower() in ("0", "false")
    return one_worker(kwargs) and kwargs.get("enforce_eager") is True and not offload_requested(kwargs)


def one_worker(kwargs: dict) -> bool:
    """One GPU and vLLM's single-process executor: the model runs where the engine core runs, in no worker process
    of its own (an in-process core of such an engine leaves no other process holding its GPU memory)."""
    one_gpu = int(kwargs.get("tensor_parallel_size") or 1) * int(kwargs.get("pipeline_parallel_size") or 1) == 1
    return one_gpu and kwargs.get("distributed_executor_backend") in (None, "uni")


def _log_wanted(log_path: Path | None) -> bool:
    return log_path is not None and not os.environ.get("VLLM_LOGGING_CONFIG_PATH") and \
        os.environ.get("VLLM_CONFIGURE_LOGGING", "1") not in ("0", "false")


def engine_environment(kwargs: dict, log_path: Path | None, in_process: bool) -> dict[str, str]:
    """Variables to set while this engine starts (its processes, if any, are spawned inside and inherit them);
    ``in_process``: :func:`engine_core_in_process` of these kwargs."""
    env: dict[str, str] = {}
    if in_process and os.environ.get(IN_PROCESS_VAR) is None:
        env[IN_PROCESS_VAR] = "0"
    if offload_requested(kwargs):
        forced = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower()
        if forced in ("1", "true"):
            raise ConfigError("model.engine asks for CPU weight offload, but VLLM_USE_V2_MODEL_RUNNER=1 is set: vLLM "
                              "0.26's V2 model runner ignores offload for dense models. Unset the variable (the "
                              "harness then starts offloading engines with the V1 runner) or drop the offload keys.")
        env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    if _log_wanted(log_path) and not in_process:
        cfg_path = Path(log_path).with_suffix(".logging.json")
        cfg_path.write_text(json.dumps(logging_config(Path(log_path))))
        env["VLLM_LOGGING_CONFIG_PATH"] = str(cfg_path)
    return env


_FORMAT = {"fmt": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s", "datefmt": "%m-%d %H:%M:%S"}


def logging_config(log_path: Path) -> dict:
    """vLLM's console logging as usual, plus a copy of every ``vllm`` record in ``log_path``."""
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    fmt = {"format": _FORMAT["fmt"], "datefmt": _FORMAT["datefmt"]}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"harness": fmt},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "harness", "level": level,
                        "stream": os.environ.get("VLLM_LOGGING_STREAM", "ext://sys.stdout")},
            "file": {"class": "logging.FileHandler", "formatter": "harness", "level": "INFO",
                     "filename": str(log_path), "mode": "a", "encoding": "utf-8"},
        },
        "loggers": {"vllm": {"handlers": ["console", "file"], "level": "DEBUG" if level == "DEBUG" else "INFO",
                             "propagate": False}},
    }


def capture_in_process_log(log_path: Path | None) -> logging.Handler | None:
    """An engine core in this interpreter logs through this process's ``vllm`` logger (configured when vllm was
    imported, so VLLM_LOGGING_CONFIG_PATH comes too late): copy its records to ``log_path`` until the handler is
    removed (:func:`stop_capture`)."""
    if not _log_wanted(log_path):
        return None
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(**_FORMAT))
    logging.getLogger("vllm").addHandler(handler)
    return handler


def stop_capture(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("vllm").removeHandler(handler)
        handler.close()


def unfreeze_vllm_envs() -> None:
    """An engine core that ran in this interpreter froze vLLM's environment variables here (``enable_envs_cache`` at
    its start): unfreeze them, so the next engine reads what is set for it (offload's runner, in-process or not)."""
    try:
        from vllm import envs
    except ImportError:
        return
    getattr(envs, "disable_envs_cache", lambda: None)()


def release_failed_start() -> None:
    """What an engine core that failed to start in this interpreter left behind (its distributed state, cached GPU
    memory), released as vLLM's own shutdown does, so the next engine starts clean; an engine process of its own
    takes all of that with it when it exits."""
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        gc.collect()
        return
    try:
        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001 - best effort: the start error that follows is what the user must see
        gc.collect()


@contextmanager
def scoped_env(env: dict[str, str]):
    """Set ``env`` for the duration (child processes spawned inside inherit it), then restore the old values."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_START_LINES = {  # vLLM 0.26 log lines -> the seconds / sizes they report
    "weights_s": r"Loading weights took ([\d.]+) seconds",
    "model_load_gib": r"Model loading took ([\d.]+) ?GiB",
    "model_load_s": r"Model loading took [\d.]+ ?GiB (?:memory )?and ([\d.]+) seconds",  # V1 runner / V2 runner
    "init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
    "compile_s": r"torch\.compile (?:took|takes) ([\d.]+) s in total",  # 0.26: "took" (compilation/monitor.py)
    "graph_capture_s": r"Graph capturing finished in ([\d.]+) secs",
    "kv_cache_gib": r"Available KV cache memory: ([\d.]+) ?GiB",
    "kv_cache_tokens": r"GPU KV cache size: ([\d,]+) tokens",
    "cpu_offload_gib": r"Total CPU offloaded parameters: ([\d.]+)",
    "prefetch_offload_gb": r"\[PrefetchOffloader\] Initialized \d+ modules\. Total GPU memory saved: ([\d.]+) GB",
}


def parse_engine_log(text: str, total_s: float | None = None, warm_up_s: float | None = None) -> dict:
    """Where an engine start's seconds went, from its log; keys are absent when their line is.

    ``other_s`` = total - model load - init engine - the harness's scoring warm-up (``warm_up_s``, timed by the
    backend: ``logprobs_warm_up_s``): process spawn, imports, config, tokenizer, KV cache set-up outside the
    profile."""
    out: dict = {}
    for key, pat in _START_LINES.items():
        found = re.findall(pat, text)
        if found:
            vals = [float(v.replace(",", "")) for v in found]
            out[key] = max(vals) if key.endswith("_s") else vals[-1]
    # FlashInfer's kernel autotune at start (model_executor/warmup/kernel_warmup.py): its seconds are not logged,
    # whether it ran is
    if "Using FlashInfer autotune cache file" in text:
        out["flashinfer_autotune"] = True
    elif "Skipping FlashInfer autotune because it is disabled" in text:
        out["flashinfer_autotune"] = False
    if warm_up_s is not None:
        out["logprobs_warm_up_s"] = round(warm_up_s, 2)
    if total_s is not None:
        out["total_s"] = round(total_s, 2)
        known = out.get("model_load_s", 0.0) + out.get("init_engine_s", 0.0) + (warm_up_s or 0.0)
        if known:
            out["other_s"] = round(max(total_s - known, 0.0), 2)
    return out


def warm_up_scoring(llm, top_k: int) -> tuple[float | None, str | None]:
    """Score a two-token prompt the way loglikelihood_rolling will (``prompt_logprobs=top_k``, one token
    generated): vLLM's start-up warm-up (0.26: the V2 runner's warmup_kernels, SamplingParams.for_sampler_warmup)
    asks for one prompt logprob besides the token's own, and Triton compiles ``_topk_log_softmax_kernel`` per
    width (2 there; 1 for plain scoring, 21 for top-k 20), so the harness's variant was compiled, or loaded from
    Triton's cache, inside the first scoring batch (vLLM's JIT monitor warned of it). (seconds taken, None), or
    (None, the error) when the request failed: nothing is raised here (scoring meets the same problem and
    reports it with its own message); the caller keeps the error in the start's breakdown."""
    t = time.time()
    try:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0,
                                flat_logprobs=True)
        llm.generate([{"prompt_token_ids": [0, 1]}], params, use_tqdm=False)
    except Exception as e:  # noqa: BLE001 - an optimisation: scoring reports the real problem
        return None, f"{type(e).__name__}: {str(e)[:200]}"
    return time.time() - t, None


def compilation_of(llm) -> dict:
    """How the engine runs the model: eager, or torch.compile (+ CUDA graphs); it moves PPL by ~0.1% on real
    weights (docs/results), so baselines record it and the gate compares it."""
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    if cfg is None:
        return {"mode": None}
    cc = getattr(cfg, "compilation_config", None)
    eager = bool(getattr(getattr(cfg, "model_config", None), "enforce_eager", False))
    mode = getattr(cc, "mode", getattr(cc, "level", None))
    mode = getattr(mode, "name", mode)
    return {"mode": "eager" if eager or mode in (0, "NONE", None) else "compiled", "compilation_mode": str(mode),
            "enforce_eager": eager, "custom_ops": list(getattr(cc, "custom_ops", None) or []),
            "cudagraph_mode": str(getattr(getattr(cc, "cudagraph_mode", None), "name", None))}


def offload_report(per_worker: list[dict], requested, env: dict, precision: str, version: str, log_path) -> dict | None:
    """What vLLM really offloaded (``per_worker``: vllm_loader.offload_info in each worker), or None where nothing was
    asked and nothing offloaded; asking for offload and getting none is an error, never a silent no-op."""
    got = sum(w["offloaded_bytes"] for w in per_worker)
    out = {"requested": requested, "offloader": per_worker[0]["offloader"],
           "offloaded_gib": round(got / 2**30, 2), "per_worker": per_worker,
           "runner_env": {k: v for k, v in env.items() if k == "VLLM_USE_V2_MODEL_RUNNER"}}
    if requested and got == 0:
        raise BackendError(
            f"model.engine.{precision}.vllm asks for CPU weight offload ({requested}) but "
            f"vLLM {version} offloaded nothing (offloader: {out['offloader']}). vLLM 0.26's V2 model "
            "runner ignores offload for dense models; the harness starts such engines with "
            "VLLM_USE_V2_MODEL_RUNNER=0, so something else overrides the runner (check the environment and "
            "the engine log " + str(log_path) + "). Otherwise drop the offload keys and use "
            "tensor_parallel_size.")
    return out if (requested or got) else None


def read_log(path: Path) -> str:
    """The engine's log so far ("" where there is none yet)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
