"""Engine behaviour on the GPU: vLLM vs HF cross-check, memory released on close, batch-1 vs batched scoring."""
from __future__ import annotations

import dataclasses
import math
import time

import pytest

from harness.backends import EngineSpec, backend_class
from harness.gate import GateSession

pytestmark = pytest.mark.gpu


def _bf16_spec(cfg, backend, **kw):
    return EngineSpec(model=cfg.resolve(cfg.model.path), precision="bf16", max_model_len=cfg.model.max_model_len,
                      engine_kwargs=cfg.engine_kwargs("bf16", backend), **kw)


def test_vllm_matches_hf_on_bf16(gpu_cfg, vllm_bf16_baselines, gpu_results):
    """The vLLM BF16 baselines (scored in the update flow) against the HF backend on the same GPU."""
    s = GateSession(gpu_cfg, backend="hf")
    ppl = {}
    for n in s.dataset_names:
        eng = s._engine("bf16")
        res = eng.loglikelihood_rolling(s.prepared(n).token_ids)
        hf = math.exp(sum(r.nll_sum for r in res) / sum(r.n_tokens for r in res))
        ppl[n] = {"vllm": vllm_bf16_baselines[n].ppl, "hf": hf,
                  "rel_diff": abs(vllm_bf16_baselines[n].ppl - hf) / hf}
    s.close()
    gpu_results("crosscheck_bf16_vllm_vs_hf", ppl)
    for n, d in ppl.items():
        assert d["rel_diff"] < 1e-3, (n, d)


def test_engine_start_release_and_batch1(gpu_cfg, gpu_results, benchmark, nvml_used_mib):
    """Engine start (benchmarked); the same dataset scored batched and one request at a time (the reference's
    way: same numbers, the speed-up is recorded); after close() the GPU memory comes back."""
    s = GateSession(gpu_cfg, backend="vllm")
    docs = s.prepared("ultrachat").token_ids
    before = nvml_used_mib()
    eng = benchmark.pedantic(backend_class("vllm"), args=(_bf16_spec(gpu_cfg, "vllm"),), rounds=1, iterations=1)
    try:
        during = nvml_used_mib()
        eng.loglikelihood_rolling(docs[:8])  # warm-up
        t0 = time.perf_counter()
        batched = eng.loglikelihood_rolling(docs)
        t_batched = time.perf_counter() - t0
        eng.spec = dataclasses.replace(eng.spec, batch_size=1)
        t0 = time.perf_counter()
        one = eng.loglikelihood_rolling(docs)
        t_one = time.perf_counter() - t0
    finally:
        eng.close()
    after = nvml_used_mib()
    for _ in range(30):  # the engine-core process exits asynchronously
        if after - before < 1024:
            break
        time.sleep(1)
        after = nvml_used_mib()
    tokens = sum(r.n_tokens for r in batched)
    m = {"before_mib": before, "during_mib": during, "after_mib": after, "batched_s": t_batched, "batch1_s": t_one,
         "speedup_batched_over_batch1": t_one / t_batched, "tokens": tokens, "batched_tok_s": tokens / t_batched,
         "batch1_tok_s": tokens / t_one}
    gpu_results("bf16_engine_lifecycle_tiny", m)
    benchmark.extra_info.update(m)
    assert during - before > 4096, f"the engine should have taken its gpu_memory_utilization share: {m}"
    assert after - before < 1024, f"GPU memory not released after close(): {m}"
    nll_b = sum(r.nll_sum for r in batched) / tokens
    nll_1 = sum(r.nll_sum for r in one) / tokens
    assert [r.n_tokens for r in batched] == [r.n_tokens for r in one]
    assert abs(math.exp(nll_b) - math.exp(nll_1)) / math.exp(nll_b) < 1e-3
