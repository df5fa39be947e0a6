"""vLLM backend: the real gate. Scores with ``prompt_logprobs`` on token-id prompts.

- every document of a dataset goes into one ``generate()`` call (``batch_size=1`` sends one request at a time, the
  reference study's way), with ``SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)``;
- prefix caching is on, but only task requests read from it (``skip_reading_prefix_cache=False``): the choices of
  a multiple-choice item share their context, and vLLM then computes that context's full KV blocks once, not once per
  choice. Perplexity documents keep vLLM's default for prompt-logprob requests (never read the cache: their every
  position is scored, unchanged by what ran before). A task request whose cached blocks reach into its continuation
  (a context of whole blocks, choices that begin alike) has positions vLLM did not score: it is scored again without
  the cache. ``enable_prefix_caching: false`` in the engine settings scores one request per continuation;
- engines start eager (no torch.compile, no CUDA graphs) unless the config says how to compile (SCORING_DEFAULTS);
- the NVFP4 kernel that actually ran (native W4A4, Marlin W4A16, emulation W4A4) is read off the loaded model;
- CPU weight offload is started so that it engages on the pinned vLLM and is verified after start (vllm_env.py);
- a BF16 view of an NVFP4 checkpoint (harness/models/synth.py) loads through the ``harness_dequant`` load format;
- the engine's log is kept (``engine_log`` in the info) and the start time is broken down from it;
- the start ends with one two-token request through the scoring path (prompt logprobs at the engine's top-k): vLLM's
  own warm-up compiles another width of the prompt-logprobs Triton kernel, so the harness's would compile (or load
  from Triton's cache) inside the first scoring batch; its seconds are part of the start (``logprobs_warm_up_s``);
- the engine core runs in this interpreter for an eager engine of one GPU without offload (vllm_env.py), else in its own
  process;
- ``close()`` shuts the engine core down, frees this process's cached GPU memory and, for an engine with processes
  of its own, returns once NVML shows the GPUs back at their use before the engine (a warning after 2 minutes if
  not); an engine that ran wholly in this process has nothing to wait for (gpu_memory.wait_closed);
- tensor / pipeline parallelism pass through to vLLM (checked against the visible GPUs first, NVLink multicast off);
  ``data_parallel_size`` is the harness's own (one engine per GPU group: data_parallel.py, via ``make_backend``).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from harness.backends.base import Backend, DocResult, EngineSpec, check_results, request_documents
from harness.backends.engine_args import VLLM_DROPPED, check_engine_kwargs
from harness.backends.vllm_env import (capture_in_process_log, engine_core_in_process, engine_environment,
                                      offload_requested, one_worker, parse_engine_log, release_failed_start, scoped_env,
                                      stop_capture, unfreeze_vllm_envs)
from harness.backends.vllm_errors import is_oom, oom_error, start_error
from harness.errors import BackendError, ConfigError, HarnessError

EXTENSION = "harness.backends.vllm_loader.HarnessWorkerExtension"
DEFAULT_MAX_LOGPROBS = 20  # vLLM's max_logprobs unless set: a larger EngineSpec.top_k raises it for that engine
RELEASE_TIMEOUT_S = 120.0  # close() waits this long at most for the engine's GPU memory to come back
# Prompt scoring never decodes: the engines start without torch.compile and CUDA-graph capture unless the config
# says how to compile (enforce_eager, compilation_config or optimization_level). Measured on one H200 with real
# SmolLM2 weights: a cached gate 87 s compiled -> 41 s eager; BF16 PPL compiled 0.14% from transformers, eager 0.02%
# (docs/results, 2026-11-27/29). What the harness chose is in the engine info (harness_defaults).
SCORING_DEFAULTS = {"enforce_eager": True}
SHARED_CONTEXTS_DEFAULT = {"enable_prefix_caching": True}  # read only by task requests (loglikelihood)
COMPILE_KEYS = ("enforce_eager", "compilation_config", "optimization_level")
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
                 "VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}


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


def kernel_label(class_names: Sequence[str], precision: str) -> str:
    """What ran for the quantized layers; none found in a quantized run is "unknown", never "dense"."""
    if precision == "bf16":
        return "dense bf16"
    if not class_names:
        return "unknown (no quantized kernel found in the loaded model)"
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


def check_parallel(kwargs: dict) -> None:
    """Tensor x pipeline parallelism on this host needs that many visible GPUs: say so before vLLM starts (it
    would wait for GPUs that never come, or fail deep in a worker). Ray places workers across its own cluster."""
    from harness.backends.data_parallel import parallel_sizes
    from harness.backends.gpu_memory import visible_gpus

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


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, spec: EngineSpec):
        super().__init__(spec)
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # its set-up took ~100 s on a fresh host
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # the caller may have touched CUDA already
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # lets apply_model read the kernel names
        # several GPUs: no NVLink multicast (NCCL NVLS, torch symmetric-memory multimem all-reduce, NVSHMEM NVLS);
        # on shared hosts it can take every GPU of the host out of service, and plain NCCL all-reduce is enough here
        for k, v in MULTICAST_OFF.items():
            os.environ.setdefault(k, v)
        try:
            import vllm
        except ImportError as e:
            raise BackendError(f"vllm backend: vllm is not importable ({e}); install the 'vllm' extra in the scoring "
                               "env, or use --backend hf") from None
        self._vllm = vllm
        available = engine_arg_names()
        kwargs, self.dropped = split_kwargs(dict(spec.engine_kwargs), available)
        shared = {k: v for k, v in SHARED_CONTEXTS_DEFAULT.items() if k in available and k not in kwargs}
        self.harness_defaults = {**scoring_defaults(kwargs, available), **shared}
        kwargs = {**self.harness_defaults, **kwargs}
        if spec.top_k > DEFAULT_MAX_LOGPROBS:  # vLLM refuses prompt_logprobs above the engine's max_logprobs
            kwargs.setdefault("max_logprobs", spec.top_k)
        check_parallel(kwargs)
        kwargs, self.fidelity = self._fidelity_kwargs(spec, kwargs)
        kwargs = self._view_kwargs(spec, kwargs)
        self.kwargs = kwargs
        self.shared = {"requests": 0, "tokens": 0, "cached_tokens": 0, "scored_again": 0}  # task requests
        self.offload_requested = offload_requested(kwargs)
        self.log_path = Path(tempfile.mkdtemp(prefix="harness-vllm-")) / f"engine-{spec.precision}.log"
        self.in_process = engine_core_in_process(kwargs)
        env = engine_environment(kwargs, self.log_path, self.in_process)
        self.env = env
        unfreeze_vllm_envs()
        self._log_handler = capture_in_process_log(self.log_path) if self.in_process else None
        from harness.backends import gpu_memory

        self._gpus = gpu_memory.visible_indices()
        self._mem_before = gpu_memory.used_mib(self._gpus)  # what close() waits to see again
        t0 = time.time()
        failure = None
        try:
            with scoped_env(env):  # the engine-core (and worker) processes are spawned inside: they inherit it
                self.llm = vllm.LLM(model=spec.model, tokenizer=spec.tokenizer or spec.model, revision=spec.revision,
                                    max_model_len=spec.max_model_len, **kwargs)
        except Exception as e:  # noqa: BLE001 - vLLM raises many types: each becomes an error that says what to change
            stop_capture(self._log_handler)
            failure = e if isinstance(e, HarnessError) else start_error(e, spec, kwargs, self._log_text(),
                                                                        self.log_path)
        if failure is not None:  # raised here, outside the handler: vLLM's exception and its frames are let go
            if self.in_process:
                release_failed_start()
            raise failure
        warm_up_s, warm_up_error = self._warm_up_scoring(spec.top_k)
        self.engine_start_s = time.time() - t0
        self.start_breakdown = parse_engine_log(self._log_text(), self.engine_start_s, warm_up_s=warm_up_s)
        if warm_up_error:
            self.start_breakdown["logprobs_warm_up_error"] = warm_up_error
        from harness.backends.vllm_loader import offload_info, quant_kernels

        try:
            per_worker = self.llm.apply_model(quant_kernels)
            self.kernels = sorted({k for w in per_worker for k in w})
            self.kernel_source = "read from the loaded model"
        except Exception as e:  # noqa: BLE001 - fall back to what the config implies
            self.kernels = []
            self.kernel_source = f"unknown ({type(e).__name__}: {str(e)[:120]})"
        self.offload = self._check_offload(offload_info)

    def _warm_up_scoring(self, top_k: int) -> tuple[float | None, str | None]:
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
            self.llm.generate([{"prompt_token_ids": [0, 1]}], params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - an optimisation: scoring reports the real problem
            return None, f"{type(e).__name__}: {str(e)[:200]}"
        return time.time() - t, None

    @staticmethod
    def _fidelity_kwargs(spec: EngineSpec, kwargs: dict) -> tuple[dict, dict | None]:
        """A W4A4 checkpoint on a GPU without FP4 units runs as the config's ``fidelity`` says (harness/fidelity.py)."""
        if spec.precision == "bf16" or not Path(spec.model, "config.json").is_file():
            return kwargs, None
        import torch

        from harness import fidelity
        from harness.quant.checkpoint import checkpoint_quantization

        cap = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
        return fidelity.choose(spec.fidelity, checkpoint_quantization(spec.model), cap, kwargs)

    def compilation(self) -> dict:
        """How the engine runs the model: eager, or torch.compile (+ CUDA graphs); it moves PPL by ~0.1% on real
        weights (docs/results), so baselines record it and the gate compares it."""
        cfg = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        if cfg is None:
            return {"mode": None}
        cc = getattr(cfg, "compilation_config", None)
        eager = bool(getattr(getattr(cfg, "model_config", None), "enforce_eager", False))
        mode = getattr(cc, "mode", getattr(cc, "level", None))
        mode = getattr(mode, "name", mode)
        return {"mode": "eager" if eager or mode in (0, "NONE", None) else "compiled", "compilation_mode": str(mode),
                "enforce_eager": eager, "custom_ops": list(getattr(cc, "custom_ops", None) or []),
                "cudagraph_mode": str(getattr(getattr(cc, "cudagraph_mode", None), "name", None))}

    @staticmethod
    def _view_kwargs(spec: EngineSpec, kwargs: dict) -> dict:
        """A BF16 view of an NVFP4 checkpoint loads through the harness's load format, registered in the workers
        by the harness's worker extension."""
        from harness.quant.checkpoint import view_source

        if view_source(spec.model) is None:
            return kwargs
        from harness.backends.vllm_loader import LOAD_FORMAT

        theirs = kwargs.get("worker_extension_cls")
        if theirs and theirs != EXTENSION:
            raise BackendError(f"{spec.model} is a BF16 view (harness_view.json), which needs worker_extension_cls "
                               f"{EXTENSION}; the config sets {theirs!r}")
        return {**kwargs, "load_format": kwargs.get("load_format", LOAD_FORMAT), "worker_extension_cls": EXTENSION}

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _check_offload(self, offload_info) -> dict | None:
        """What vLLM really offloaded; asking for offload and getting none is an error, never a silent no-op."""
        try:
            per_worker = self.llm.apply_model(offload_info)
        except Exception as e:  # noqa: BLE001
            if self.offload_requested:
                self.close()
                raise BackendError(f"could not verify the requested CPU offload ({type(e).__name__}: {e})") from None
            return None
        got = sum(w["offloaded_bytes"] for w in per_worker)
        out = {"requested": self.offload_requested, "offloader": per_worker[0]["offloader"],
               "offloaded_gib": round(got / 2**30, 2), "per_worker": per_worker,
               "runner_env": {k: v for k, v in self.env.items() if k == "VLLM_USE_V2_MODEL_RUNNER"}}
        if self.offload_requested and got == 0:
            self.close()
            raise BackendError(
                f"model.engine.{self.spec.precision}.vllm asks for CPU weight offload ({self.offload_requested}) but "
                f"vLLM {self._vllm.__version__} offloaded nothing (offloader: {out['offloader']}). vLLM 0.26's V2 model "
                "runner ignores offload for dense models; the harness starts such engines with "
                "VLLM_USE_V2_MODEL_RUNNER=0, so something else overrides the runner (check the environment and "
                "the engine log " + str(self.log_path) + "). Otherwise drop the offload keys and use "
                "tensor_parallel_size.")
        return out if (self.offload_requested or got) else None

    @property
    def reports_progress(self) -> bool:
        return bool(self.spec.batch_size)  # all at once: vLLM draws its own bar (prompts, tokens/s)

    def loglikelihood_rolling(self, docs: Sequence[Sequence[int]], progress=None,
                              token_logprobs: bool = False, top_k: int = 0) -> list[DocResult]:
        from vllm import SamplingParams

        most = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "max_logprobs", -1)
        if top_k and most != -1 and top_k > most:
            raise ConfigError(f"distributions.top_k {top_k} is above this engine's max_logprobs {most}: set "
                              f"model.engine.{self.spec.precision}.vllm.max_logprobs: {top_k} (or lower top_k)")
        params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0,
                                flat_logprobs=True)
        outs = self._generate(docs, params, progress)
        return check_results([doc_result(o.prompt_logprobs, d, token_logprobs, top_k) for o, d in zip(outs, docs)],
                             docs, self.name)

    def loglikelihood(self, requests, progress=None) -> list[tuple[float, bool]]:
        """Task requests scored as the perplexity texts are (``prompt_logprobs``, one generated token), with the top-1
        token beside each prompt token (``prompt_logprobs=1``); only the continuation's positions are read. With
        prefix caching on (the harness's default) the requests read the cache, so a context shared by several
        choices is computed once; a request whose continuation was partly served from the cache is scored again
        without it (``continuation_result`` says which). What was shared is counted in ``self.shared``."""
        from vllm import SamplingParams

        docs, lens = request_documents(requests, self.name)
        share = bool(self.kwargs.get("enable_prefix_caching"))

        def params(read_cache: bool):
            return SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False, temperature=0.0,
                                  flat_logprobs=True, skip_reading_prefix_cache=not read_cache)

        if share and hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # hits from these requests only: the same numbers whatever ran before
        outs = self._generate(docs, params(share), progress)
        cached = [int(getattr(o, "num_cached_tokens", 0) or 0) for o in outs]
        results = [continuation_result(o.prompt_logprobs, d, n, c) for o, d, n, c in zip(outs, docs, lens, cached)]
        again = [j for j, r in enumerate(results) if r is None]
        if again:
            for j, o in zip(again, self._generate([docs[j] for j in again], params(False))):
                results[j] = continuation_result(o.prompt_logprobs, docs[j], lens[j], 0)
        s = self.shared
        s["requests"] += len(docs)
        s["tokens"] += sum(len(d) for d in docs)
        redone = set(again)
        s["cached_tokens"] += sum(c for j, c in enumerate(cached) if j not in redone)
        s["scored_again"] += len(again)
        return results

    def _generate(self, docs, params, progress=None, what: str = "scoring") -> list:
        """Every token-id prompt through ``generate``: all at once, or ``batch_size`` at a time with progress; an out
        of memory says what to change (``what``: scoring or generation)."""
        prompts = [{"prompt_token_ids": list(d)} for d in docs]
        try:
            if self.spec.batch_size:
                outs = []
                bs = self.spec.batch_size
                for i in range(0, len(prompts), bs):
                    outs += self.llm.generate(prompts[i : i + bs], params, use_tqdm=False)
                    if progress:
                        progress(min(i + bs, len(prompts)), len(prompts))
                return outs
            return self.llm.generate(prompts, params, use_tqdm=len(prompts) >= 64)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                raise oom_error(e, what, self.kwargs) from None
            raise

    def generate_until(self, prompts: Sequence[Sequence[int]], until: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy generation of every prompt in one ``generate()`` call (``batch_size`` at a time where set),
        stopping at ``until`` (vLLM's ``stop``: the stop string is not part of the text)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=list(until))
        return [o.outputs[0].text for o in self._generate(prompts, params, what="generation")]

    def info(self) -> dict:
        import torch

        from harness.backends.hf import _maybe_version

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?"
        return {"backend": self.name, "device": dev, "dtype": str(self.kwargs.get("dtype", "auto")),
                "versions": {"vllm": self._vllm.__version__, "torch": torch.__version__,
                             **_maybe_version("compressed-tensors")},
                "kernel": kernel_label(self.kernels, self.spec.precision), "kernel_classes": self.kernels,
                "kernel_source": self.kernel_source, "engine_kwargs": dict(self.spec.engine_kwargs),
                "harness_defaults": self.harness_defaults,
                "fidelity": self.fidelity, "compilation": self.compilation(),
                "dropped_kwargs": self.dropped, "batch_size": self.spec.batch_size,
                "engine_start_s": round(self.engine_start_s, 2), "engine_start": self.start_breakdown,
                "engine_core": "in this process" if self.in_process else "own process",
                "offload": self.offload, "engine_log": str(self.log_path),
                "env": {**{k: os.environ.get(k) for k in ("VLLM_USE_FLASHINFER_SAMPLER",)},
                        **{k: v for k, v in self.env.items() if k != "VLLM_LOGGING_CONFIG_PATH"}}}

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the process exit below frees the rest
            pass
        stop_capture(getattr(self, "_log_handler", None))
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        from harness.backends import gpu_memory

        # an in-process engine of one worker has no process of its own to wait for (2026-11-30: the 120 s timeout)
        gpu_memory.wait_closed(f"the {self.spec.precision} engine", getattr(self, "_mem_before", None), self._gpus,
                               own_process=not (self.in_process and one_worker(self.kwargs)),
                               timeout_s=RELEASE_TIMEOUT_S)


def doc_result(prompt_logprobs, ids: Sequence[int], keep_tokens: bool = False, top_k: int = 0) -> DocResult:
    """Sum the logprob of each actual prompt token (position >= 1) from vLLM's prompt_logprobs; with ``top_k``
    also the top-k next tokens at each of those positions."""
    if prompt_logprobs is None:
        raise BackendError("vllm returned no prompt_logprobs (is prompt_logprobs set and max_logprobs >= 0?)")
    n = len(ids)
    flat = hasattr(prompt_logprobs, "start_indices")
    npos = len(prompt_logprobs.start_indices) if flat else len(prompt_logprobs)
    if npos != n:
        raise BackendError(f"vllm returned prompt_logprobs for {npos} positions, prompt has {n}")
    if top_k:
        return topk_result(prompt_logprobs, ids, top_k)
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


def continuation_result(prompt_logprobs, ids: Sequence[int], n: int, cached: int = 0) -> tuple[float, bool] | None:
    """(sum of the last ``n`` prompt tokens' log-probabilities, whether each was the top-1) from flat prompt logprobs
    with ``prompt_logprobs=1``: every position >= 1 holds two entries, the prompt token first, then the top-1
    (vllm/logprobs.py, append_logprobs_for_next_position; as topk_result reads them). Only those n positions are read.

    ``cached``: the request's ``num_cached_tokens``, the prompt tokens vLLM took from its prefix cache. It scores
    only positions ``cached + 1`` on (the V2 runner returns just those, after the empty position 0; the V1 runner
    returns every position, those before unfilled). None when a continuation position was not scored: the caller
    scores the request again without the cache."""
    import math

    if prompt_logprobs is None or not hasattr(prompt_logprobs, "start_indices"):
        raise BackendError("vllm: task scoring needs flat prompt logprobs (SamplingParams(flat_logprobs=True))")
    length = len(ids)
    npos = len(prompt_logprobs.start_indices)
    if npos not in (length, length - cached):
        raise BackendError(f"vllm returned prompt_logprobs for {npos} positions, prompt has {length}"
                           + (f" ({cached} of them from the prefix cache)" if cached else ""))
    if length - n < cached + 1:
        return None
    shift = length - npos  # 0 (every position returned) or ``cached`` (only the scored ones)
    total, greedy = 0.0, True
    for i in range(length - n, length):
        s, e = prompt_logprobs.start_indices[i - shift], prompt_logprobs.end_indices[i - shift]
        if e - s != 2 or prompt_logprobs.token_ids[s] != ids[i]:
            raise BackendError(f"vllm: expected the prompt token {ids[i]} and the top-1 at position {i}, got "
                               f"{prompt_logprobs.token_ids[s:e]}")
        total += prompt_logprobs.logprobs[s]
        greedy = greedy and prompt_logprobs.token_ids[s + 1] == ids[i]
    if not math.isfinite(total):
        raise BackendError(f"vllm: a non-finite log-likelihood ({total}): the model produced NaN/inf logits")
    return total, greedy


def topk_result(prompt_logprobs, ids: Sequence[int], k: int) -> DocResult:
    """From flat prompt logprobs with ``prompt_logprobs=k``: every position >= 1 holds k + 1 entries, the prompt token
    first (at its vocabulary rank), then the top k, best first (vllm/logprobs.py, append_logprobs_for_next_position)."""
    import numpy as np

    n = len(ids)
    if not hasattr(prompt_logprobs, "start_indices"):
        raise BackendError("vllm: top-k distributions need flat prompt logprobs (SamplingParams(flat_logprobs=True))")
    if n < 2:
        return DocResult(logprob_sum=0.0, n_tokens=0, token_logprobs=[], top_ids=np.zeros((0, k), dtype=np.int64),
                         top_logprobs=np.zeros((0, k), dtype=np.float32))
    lo, hi = prompt_logprobs.start_indices[1], prompt_logprobs.end_indices[n - 1]
    width = k + 1
    starts = np.asarray(prompt_logprobs.start_indices[1:n]) - lo
    if hi - lo != (n - 1) * width or not np.array_equal(starts, np.arange(n - 1) * width):
        raise BackendError(f"vllm: expected {width} prompt logprobs at each of {n - 1} positions (the token and the "
                           f"top {k}), got {hi - lo} in all; is max_logprobs >= {k}?")
    tok = np.asarray(prompt_logprobs.token_ids[lo:hi], dtype=np.int64).reshape(n - 1, width)
    lps = np.asarray(prompt_logprobs.logprobs[lo:hi], dtype=np.float32).reshape(n - 1, width)
    if not np.array_equal(tok[:, 0], np.asarray(ids[1:], dtype=np.int64)):
        raise BackendError("vllm: the first prompt logprob of a position is not the prompt token")
    true = lps[:, 0].astype(np.float64)
    return DocResult(logprob_sum=float(true.sum()), n_tokens=n - 1, token_logprobs=true.tolist(),
                     top_ids=tok[:, 1:], top_logprobs=lps[:, 1:])
