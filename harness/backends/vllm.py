"""vLLM backend: the real gate. Scores with ``prompt_logprobs`` on token-id prompts.

- every document of a dataset goes into one ``generate()`` call (``batch_size=1`` sends one request at a time, the
  reference study's way), with ``SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)``;
- prefix caching is off: prompt logprobs can depend on request order when it is on;
- the NVFP4 kernel that actually ran (native W4A4, Marlin W4A16, emulation W4A4) is read off the loaded model;
- ``close()`` shuts the engine-core process down and waits until the GPU memory is back.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import time
from typing import Sequence

from harness.backends.base import Backend, DocResult, EngineSpec, check_results
from harness.errors import BackendError, ConfigError

# kwargs the harness knows (the reference settings use them); passed through untouched where this vLLM has them
KNOWN_KWARGS = {
    "tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend", "cpu_offload_gb",
    "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "swap_space", "enforce_eager",
    "linear_backend", "dtype", "seed", "kv_cache_dtype", "trust_remote_code", "tokenizer_mode", "quantization",
    "max_logprobs", "skip_tokenizer_init", "compilation_config", "attention_backend", "block_size",
}
HARNESS_OWNED = {"model", "tokenizer", "revision", "max_model_len", "enable_prefix_caching"}
OOM_KNOBS = ("gpu_memory_utilization (raise it, up to ~0.95)", "max_num_batched_tokens (lower it)",
             "max_num_seqs (lower it)", "tensor_parallel_size (spread the model over more GPUs)",
             "cpu_offload_gb (offload weights to CPU memory)")


def engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def split_kwargs(kwargs: dict, available: set[str]) -> tuple[dict, list[str]]:
    """Validate engine kwargs: unknown keys are an error; known ones this vLLM lacks are dropped (returned)."""
    owned = sorted(set(kwargs) & HARNESS_OWNED)
    if owned:
        raise ConfigError(f"vllm engine kwargs {owned} are set by the harness (model.max_model_len, model.path, ...); "
                          "remove them from model.engine")
    bad = sorted(k for k in kwargs if k not in KNOWN_KWARGS and k not in available)
    if bad:
        raise ConfigError(f"vllm backend: unknown engine kwarg(s) {bad}; known: {', '.join(sorted(KNOWN_KWARGS))} "
                          "(or any vllm EngineArgs field)")
    dropped = sorted(k for k in kwargs if k not in available)
    return {k: v for k, v in kwargs.items() if k in available}, dropped


def kernel_label(class_names: Sequence[str], precision: str) -> str:
    if precision == "bf16" or not class_names:
        return "dense (no quantized layers)" if precision != "bf16" else "dense bf16"
    labels = set()
    for n in class_names:
        if "Marlin" in n:
            labels.add("Marlin W4A16 (activations not quantized)")
        elif "Emulation" in n:
            labels.add("emulation W4A4")
        elif "NvFp4" in n:
            labels.add(f"native W4A4 ({n})")
        else:
            labels.add(n)
    return " + ".join(sorted(labels))


def _quant_kernels(model) -> list[str]:
    """Runs inside the vLLM worker: class names of the quantized linear kernels in the loaded model."""
    names = set()
    for m in model.modules():
        scheme = getattr(m, "scheme", None) or getattr(getattr(m, "quant_method", None), "scheme", None)
        k = getattr(scheme, "kernel", None)
        if k is not None:
            names.add(type(k).__name__)
    return sorted(names)


def is_oom(e: BaseException) -> bool:
    s = f"{type(e).__name__}: {e}".lower()
    return any(t in s for t in ("out of memory", "outofmemory", "no available memory for the cache blocks",
                                "insufficient memory", "not enough memory"))


def oom_error(e: BaseException, what: str, kwargs: dict) -> BackendError:
    knobs = "\n".join(f"  - {k}" for k in OOM_KNOBS)
    return BackendError(f"GPU out of memory while {what} ({str(e)[:300]}).\nCurrent engine kwargs: {kwargs}\n"
                        f"Knobs to turn in model.engine.<precision>.vllm:\n{knobs}")


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # its set-up took ~100 s on a fresh host
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # the caller may have touched CUDA already
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # lets apply_model read the kernel names
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        try:
            import vllm
        except ImportError as e:
            raise BackendError(f"vllm backend: vllm is not importable ({e}); install the 'vllm' extra in the scoring "
                               "env, or use --backend hf") from None
        self._vllm = vllm
        kwargs, self.dropped = split_kwargs(dict(spec.engine_kwargs), engine_arg_names())
        self.kwargs = kwargs
        t0 = time.time()
        try:
            self.llm = vllm.LLM(model=spec.model, tokenizer=spec.tokenizer or spec.model, revision=spec.revision,
                                max_model_len=spec.max_model_len, enable_prefix_caching=False, **kwargs)
        except Exception as e:  # noqa: BLE001 - vLLM raises many types; OOM gets the knobs, the rest passes through
            if is_oom(e):
                raise oom_error(e, f"starting the {spec.precision} engine", kwargs) from None
            if "engine core initialization failed" in str(e).lower():
                # the root cause is in the engine-core process's log above; OOM is the usual one
                knobs = "\n".join(f"  - {k}" for k in OOM_KNOBS)
                raise BackendError(
                    f"vLLM could not start the {spec.precision} engine for {spec.model} ({e}). The engine-core log "
                    f"above has the root cause. If it ran out of GPU memory (weights or KV cache do not fit the "
                    f"share), turn these knobs in model.engine.{spec.precision}.vllm:\n{knobs}\n"
                    f"Current engine kwargs: {kwargs}") from None
            raise
        self.engine_start_s = time.time() - t0
        try:
            per_worker = self.llm.apply_model(_quant_kernels)
            self.kernels = sorted({k for w in per_worker for k in w})
            self.kernel_source = "read from the loaded model"
        except Exception as e:  # noqa: BLE001 - fall back to what the config implies
            self.kernels = []
            self.kernel_source = f"unknown ({type(e).__name__}: {str(e)[:120]})"

    def loglikelihood_rolling(self, docs: Sequence[Sequence[int]], progress=None,
                              token_logprobs: bool = False) -> list[DocResult]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0.0,
                                flat_logprobs=True)
        prompts = [{"prompt_token_ids": list(d)} for d in docs]
        try:
            if self.spec.batch_size:
                outs = []
                bs = self.spec.batch_size
                for i in range(0, len(prompts), bs):
                    outs += self.llm.generate(prompts[i : i + bs], params, use_tqdm=False)
                    if progress:
                        progress(min(i + bs, len(prompts)), len(prompts))
            else:
                outs = self.llm.generate(prompts, params, use_tqdm=len(prompts) >= 64)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                raise oom_error(e, "scoring", self.kwargs) from None
            raise
        return check_results([doc_result(o.prompt_logprobs, d, token_logprobs) for o, d in zip(outs, docs)], docs,
                             self.name)

    def info(self) -> dict:
        import torch

        from harness.backends.hf import _maybe_version

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?"
        return {"backend": self.name, "device": dev, "dtype": str(self.kwargs.get("dtype", "auto")),
                "versions": {"vllm": self._vllm.__version__, "torch": torch.__version__,
                             **_maybe_version("compressed-tensors")},
                "kernel": kernel_label(self.kernels, self.spec.precision), "kernel_classes": self.kernels,
                "kernel_source": self.kernel_source, "engine_kwargs": dict(self.spec.engine_kwargs),
                "dropped_kwargs": self.dropped, "batch_size": self.spec.batch_size,
                "engine_start_s": round(self.engine_start_s, 2),
                "env": {k: os.environ.get(k) for k in ("VLLM_USE_FLASHINFER_SAMPLER",)}}

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the process exit below frees the rest
            pass
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


def doc_result(prompt_logprobs, ids: Sequence[int], keep_tokens: bool = False) -> DocResult:
    """Sum the logprob of each actual prompt token (position >= 1) from vLLM's prompt_logprobs."""
    if prompt_logprobs is None:
        raise BackendError("vllm returned no prompt_logprobs (is prompt_logprobs set and max_logprobs >= 0?)")
    n = len(ids)
    flat = hasattr(prompt_logprobs, "start_indices")
    npos = len(prompt_logprobs.start_indices) if flat else len(prompt_logprobs)
    if npos != n:
        raise BackendError(f"vllm returned prompt_logprobs for {npos} positions, prompt has {n}")
    if flat and n > 1:  # fast path (prompt_logprobs=0): one entry per position, the prompt token, contiguous
        lo, hi = prompt_logprobs.start_indices[1], prompt_logprobs.end_indices[n - 1]
        if hi - lo == n - 1 and prompt_logprobs.token_ids[lo:hi] == list(ids[1:]):
            lps = prompt_logprobs.logprobs[lo:hi]
            return DocResult(logprob_sum=sum(lps), n_tokens=n - 1, token_logprobs=list(lps) if keep_tokens else None)
    total = 0.0
    count = 0
    per_tok: list[float] | None = [] if keep_tokens else None
    for i in range(1, n):
        tok = ids[i]
        lp = None
        if flat:
            s, e = prompt_logprobs.start_indices[i], prompt_logprobs.end_indices[i]
            for j in range(s, e):
                if prompt_logprobs.token_ids[j] == tok:
                    lp = prompt_logprobs.logprobs[j]
                    break
        else:
            pos = prompt_logprobs[i]
            if pos and tok in pos:
                lp = pos[tok].logprob
        if lp is None:
            raise BackendError(f"vllm: missing prompt logprob for token {tok} at position {i}")
        total += lp
        count += 1
        if per_tok is not None:
            per_tok.append(lp)
    return DocResult(logprob_sum=total, n_tokens=count, token_logprobs=per_tok)
