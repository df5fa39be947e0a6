"""Tensor parallelism and CPU offload (issue: two GPUs). Tests that need two GPUs skip cleanly on one.

- tensor_parallel_size=2 vs 1 on the same checkpoint: PPL within 0.1%, for BF16, NVFP4 Marlin and NVFP4 emulation,
  on the tiny default and the Qwen2.5-1.5B shape;
- a BF16 baseline update of a model that does not fit one GPU's configured share (Qwen2.5-7B shape, random
  weights) with TP=2, against CPU offload on one GPU (tests/gpu/test_offload.py): wall times side by side, PPL
  must agree.
"""
from __future__ import annotations

import math

import pytest

from harness.backends import EngineSpec, backend_class
from harness.gate import GateSession

SHARE = 0.1  # of ~140 GiB: 14 GiB, less than the 7B shape's 15.2 GB of BF16 weights
OFFLOAD_GB = 12

pytestmark = pytest.mark.multi_gpu  # `pytest -m multi_gpu`; not part of `pytest -m gpu`

def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


needs_two = pytest.mark.skipif("_gpus() < 2", reason="needs 2 GPUs (device kind nvidia-h200-x2)")


@needs_two
def test_7b_shape_baseline_update_with_tp2_matches_offload(model_7b, update_bf16, gpu_results, benchmark):
    tp = benchmark.pedantic(update_bf16, args=(model_7b, {"gpu_memory_utilization": SHARE,
                                                         "tensor_parallel_size": 2}, "tp2"),
                            rounds=1, iterations=1)
    off = update_bf16(model_7b, {"gpu_memory_utilization": SHARE, "cpu_offload_gb": OFFLOAD_GB}, "offload")
    gpu_results("7b_tp2_vs_offload", {"tp2": tp, "offload": off})
    assert abs(tp["ppl"] - off["ppl"]) / off["ppl"] < 1e-3, (tp, off)


@needs_two
@pytest.mark.parametrize("linear_backend", ["bf16", "auto", "emulation"])
def test_tiny_tp2_matches_tp1(gpu_cfg, vllm_bf16_baselines, linear_backend, gpu_results):
    ppl = {}
    for tp in (1, 2):
        cfg = gpu_cfg.model_copy(deep=True)
        prec = "bf16" if linear_backend == "bf16" else "nvfp4"
        kw = cfg.model.engine.setdefault(prec, {}).setdefault("vllm", {})
        kw["tensor_parallel_size"] = tp
        if linear_backend == "emulation":
            kw["linear_backend"] = "emulation"
        s = GateSession(cfg, backend="vllm")
        try:
            res = [s.score(n, prec) for n in s.dataset_names]
        finally:
            s.close()
        ppl[tp] = math.exp(sum(sum(r.nll_sums) for r in res) / sum(r.tokens for r in res))
    gpu_results(f"tiny_tp2_vs_tp1_{linear_backend}", ppl)
    assert abs(ppl[2] - ppl[1]) / ppl[1] < 1e-3, ppl



@needs_two
@pytest.mark.parametrize("variant", ["bf16", "nvfp4-marlin", "nvfp4-emulation"])
def test_1p5b_tp2_matches_tp1(bench_models, bench_workload, variant, gpu_results):
    precision = "bf16" if variant == "bf16" else "nvfp4"
    docs = bench_workload["prompts"][:50]
    ppl = {}
    for tp in (1, 2):
        kw = {**bench_workload["engine"], "tensor_parallel_size": tp}
        if variant == "nvfp4-emulation":
            kw["linear_backend"] = "emulation"
        eng = backend_class("vllm")(EngineSpec(model=str(bench_models[precision]), precision=precision,
                                               max_model_len=bench_workload["max_model_len"], engine_kwargs=kw))
        try:
            res = eng.loglikelihood_rolling(docs)
        finally:
            eng.close()
        ppl[tp] = math.exp(sum(r.nll_sum for r in res) / sum(r.n_tokens for r in res))
    gpu_results(f"throughput_1p5b_tp2_vs_tp1_{variant}", ppl)
    assert abs(ppl[2] - ppl[1]) / ppl[1] < 1e-3, ppl
