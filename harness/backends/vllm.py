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

import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from harness.backends import gpu_memory
from harness.backends.base import Backend, DocResult, EngineSpec, check_results, request_documents
from harness.backends.hf import _maybe_version
from harness.backends.vllm_env import (capture_in_process_log, compilation_of, engine_core_in_process,
                                       engine_environment, offload_report, offload_requested, one_worker,
                                       parse_engine_log, read_log, release_failed_start, scoped_env, stop_capture,
                                       unfreeze_vllm_envs, warm_up_scoring)
from harness.backends.vllm_errors import is_oom, oom_error, start_error
from harness.backends.vllm_kwargs import engine_arg_names, engine_kwargs
from harness.backends.vllm_outputs import continuation_result, count_shared, doc_result, kernel_label
from harness.errors import BackendError, ConfigError, HarnessError

RELEASE_TIMEOUT_S = 120.0  # close() waits this long at most for the engine's GPU memory to come back
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
                 "VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}


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
        kwargs, self.dropped, self.harness_defaults, self.fidelity = engine_kwargs(spec, engine_arg_names())
        self.kwargs = kwargs
        self.shared = {"requests": 0, "tokens": 0, "cached_tokens": 0, "scored_again": 0}  # task requests
        self.offload_requested = offload_requested(kwargs)
        self.log_path = Path(tempfile.mkdtemp(prefix="harness-vllm-")) / f"engine-{spec.precision}.log"
        self.in_process = engine_core_in_process(kwargs)
        env = engine_environment(kwargs, self.log_path, self.in_process)
        self.env = env
        unfreeze_vllm_envs()
        self._log_handler = capture_in_process_log(self.log_path) if self.in_process else None

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
            failure = e if isinstance(e, HarnessError) else start_error(e, spec, kwargs, read_log(self.log_path),
                                                                        self.log_path)
        if failure is not None:  # raised here, outside the handler: vLLM's exception and its frames are let go
            if self.in_process:
                release_failed_start()
            raise failure
        warm_up_s, warm_up_error = warm_up_scoring(self.llm, spec.top_k)
        self.engine_start_s = time.time() - t0
        self.start_breakdown = parse_engine_log(read_log(self.log_path), self.engine_start_s, warm_up_s=warm_up_s)
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

    def compilation(self) -> dict:
        """How the engine runs the model (vllm_env.compilation_of)."""
        return compilation_of(self.llm)

    def _check_offload(self, offload_info) -> dict | None:
        """What vLLM really offloaded; asking for offload and getting none is an error, never a silent no-op."""
        try:
            per_worker = self.llm.apply_model(offload_info)
        except Exception as e:  # noqa: BLE001
            if self.offload_requested:
                self.close()
                raise BackendError(f"could not verify the requested CPU offload ({type(e).__name__}: {e})") from None
            return None
        try:
            return offload_report(per_worker, self.offload_requested, self.env, self.spec.precision,
                                  self._vllm.__version__, self.log_path)
        except BackendError:
            self.close()
            raise

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
        count_shared(self.shared, docs, cached, again)
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

        # an in-process engine of one worker has no process of its own to wait for (2026-11-30: the 120 s timeout)
        gpu_memory.wait_closed(f"the {self.spec.precision} engine", getattr(self, "_mem_before", None), self._gpus,
                               own_process=not (self.in_process and one_worker(self.kwargs)),
                               timeout_s=RELEASE_TIMEOUT_S)


