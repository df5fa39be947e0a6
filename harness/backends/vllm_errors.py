"""Why a vLLM engine did not start or ran out of memory, in words that say what to change (the knobs, or the backend
that runs a scheme vLLM has no kernel for)."""
from __future__ import annotations

import sys

from harness.backends.base import EngineSpec
from harness.errors import BackendError

OOM_KNOBS = ("gpu_memory_utilization (raise it, up to ~0.95)", "max_num_batched_tokens (lower it)",
             "max_num_seqs (lower it)", "tensor_parallel_size (spread the model over more GPUs)",
             "offload_backend: prefetch with offload_group_size / offload_num_in_group (or cpu_offload_gb) "
             "(keep some layers' weights in CPU memory)")


def is_oom(e: BaseException) -> bool:
    s = f"{type(e).__name__}: {e}".lower()
    return any(t in s for t in ("out of memory", "outofmemory", "no available memory for the cache blocks",
                                "insufficient memory", "not enough memory"))


# what vLLM 0.26 raises (in the engine-core process, so read from its log) for a checkpoint it has no kernel for
UNSUPPORTED = ("no compressed-tensors compatible scheme", "notimplementederror")


def start_error(e: BaseException, spec: EngineSpec, kwargs: dict, log_text: str, log_path) -> BackendError:
    """Why an engine did not start, in words that say what to change: a scheme this vLLM cannot run, GPU memory, or
    (anything else) where the root cause is. vLLM reports the engine-core process's failure as "Engine core
    initialization failed"; the cause is in that process's log."""
    text = f"{type(e).__name__}: {e}\n{log_text}"
    low = text.lower()
    if any(u in low for u in UNSUPPORTED) and not is_oom(e):
        version = getattr(sys.modules.get("vllm"), "__version__", "")
        line = next((ln.strip() for ln in text.splitlines() if any(u in ln.lower() for u in UNSUPPORTED)), str(e))
        scheme = "quantization scheme" if "compressed-tensors" in low else "quantization scheme or architecture"
        return BackendError(
            f"vLLM {version} cannot run {spec.model}: {line[:300]}. vLLM has no kernel for this checkpoint's {scheme}; "
            "this is not memory. vLLM runs NVFP4, NVFP4A16, FP8 and int4/int8 weights per channel or group, but not "
            "e.g. 2-bit or per-tensor int weights. Score it with --backend hf (transformers runs any compressed-tensors "
            f"scheme as fake quantization), or quantize to a scheme vLLM runs. Engine log: {log_path}")
    if is_oom(e) or any(t in log_text.lower() for t in ("out of memory", "outofmemory", "no available memory")):
        return oom_error(e, f"starting the {spec.precision} engine", kwargs)
    if "engine core initialization failed" in low:
        knobs = "\n".join(f"  - {k}" for k in OOM_KNOBS)
        return BackendError(
            f"vLLM could not start the {spec.precision} engine for {spec.model} ({e}). The engine-core log "
            f"({log_path}) has the root cause; it was neither an unsupported scheme nor out-of-memory that the harness "
            f"recognises. If it is memory, turn these knobs in model.engine.{spec.precision}.vllm:\n{knobs}\n"
            f"Current engine kwargs: {kwargs}")
    return BackendError(f"vLLM could not start the {spec.precision} engine for {spec.model}: {type(e).__name__}: "
                        f"{str(e)[:500]} (engine log: {log_path})")


def oom_error(e: BaseException, what: str, kwargs: dict) -> BackendError:
    knobs = "\n".join(f"  - {k}" for k in OOM_KNOBS)
    return BackendError(f"GPU out of memory while {what} ({str(e)[:300]}).\nCurrent engine kwargs: {kwargs}\n"
                        f"Knobs to turn in model.engine.<precision>.vllm:\n{knobs}")
