"""Tensor parallelism and CPU offload (issue: two GPUs). Tests that need two GPUs skip cleanly on one.

- tensor_parallel_size=2 vs 1 on the same checkpoint: PPL within 0.1%, for BF16, NVFP4 Marlin and NVFP4 emulation,
  on the tiny default and the Qwen2.5-1.5B shape;
- a BF16 baseline update of a model that does not fit one GPU's configured share (Qwen2.5-7B shape, random
  weights): with cpu_offload_gb on one GPU and with TP=2; wall times side by side, PPL must agree.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from harness.backends import EngineSpec, backend_class
from harness.errors import BackendError
from harness.gate import GateSession

pytestmark = pytest.mark.multi_gpu  # `pytest -m multi_gpu`; not part of `pytest -m gpu`

SHAPE_7B = dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
                rope_theta=1000000.0)
SHARE = 0.1  # of ~140 GiB: 14 GiB, less than the 7B shape's 15.2 GB of BF16 weights
OFFLOAD_GB = 12


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


needs_two = pytest.mark.skipif("_gpus() < 2", reason="needs 2 GPUs (device kind nvidia-h200-x2)")


@pytest.fixture(scope="module")
def model_7b(tmp_path_factory, random_qwen2):
    root = Path(os.environ.get("HARNESS_BENCH_DIR") or tmp_path_factory.mktemp("bench"))
    return random_qwen2(SHAPE_7B, root / "7b-shape")


def _update(gpu_cfg, model: Path, engine: dict, tag: str):
    cfg = gpu_cfg.model_copy(deep=True)
    cfg.name = f"qwen2.5-7b-shape-{tag}"
    cfg.model.path = str(model)
    cfg.model.engine = {"bf16": {"vllm": {"dtype": "bfloat16", "seed": 0, "enforce_eager": True,
                                          "max_num_batched_tokens": 2048, **engine}}}
    s = GateSession(cfg, backend="vllm", update_baselines=True, force=True)
    t0 = time.time()
    try:
        pairs = s.update_baselines()
    finally:
        s.close()
    wall = time.time() - t0
    nll = sum(b.nll * b.tokens for _, b in pairs) / sum(b.tokens for _, b in pairs)
    return {"wall_s": wall, "ppl": math.exp(nll), "engine": engine,
            "datasets": {b.dataset: b.ppl for _, b in pairs}}


def test_7b_shape_does_not_fit_the_share_without_offload(gpu_cfg, model_7b, gpu_results):
    with pytest.raises(BackendError) as e:
        _update(gpu_cfg, model_7b, {"gpu_memory_utilization": SHARE}, "no-offload")
    gpu_results("7b_no_offload_error", str(e.value)[:600])
    assert "cpu_offload_gb" in str(e.value) and "tensor_parallel_size" in str(e.value)


@pytest.mark.xfail(strict=True, reason=(
    "seen on the H200 with vLLM 0.26.0, 2026-11-24: cpu_offload_gb=12 offloaded nothing (no 'Total CPU offloaded "
    "parameters' log line, 'Model loading took 14.29 GiB', KV cache -0.88 GiB) and the engine failed with 'No "
    "available memory for the cache blocks'; open in the two-GPU issue. strict: a passing run must update this"))
def test_7b_shape_baseline_update_with_cpu_offload_on_one_gpu(gpu_cfg, model_7b, gpu_results, benchmark):
    r = benchmark.pedantic(_update, args=(gpu_cfg, model_7b, {"gpu_memory_utilization": SHARE,
                                                              "cpu_offload_gb": OFFLOAD_GB}, "offload"),
                           rounds=1, iterations=1)
    gpu_results("7b_offload_1gpu", r)
    benchmark.extra_info.update(r)
    assert math.isfinite(r["ppl"])


@needs_two
def test_7b_shape_baseline_update_with_tp2_matches_offload(gpu_cfg, model_7b, gpu_results, benchmark):
    tp = benchmark.pedantic(_update, args=(gpu_cfg, model_7b, {"gpu_memory_utilization": SHARE,
                                                               "tensor_parallel_size": 2}, "tp2"),
                            rounds=1, iterations=1)
    off = _update(gpu_cfg, model_7b, {"gpu_memory_utilization": SHARE, "cpu_offload_gb": OFFLOAD_GB}, "offload")
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
