"""Several GPUs of one host (`pytest -m multi_gpu`, device kind nvidia-h200-x2); every test skips cleanly on one GPU.

- tensor_parallel_size=2 and pipeline_parallel_size=2 against one GPU on the same checkpoint: PPL within LAYOUT_TOL (0.306%), for
  BF16, NVFP4 Marlin and NVFP4 emulation, at the Qwen2.5-1.5B shape;
- data_parallel_size=2 (one engine per GPU, the harness's own sharding): the same documents, in the same order, with
  the same token counts and PPL as one engine (Marlin on the tiny default through the gate's engine path; BF16 at the
  1.5B shape); the speedup on two GPUs at the 1.5B shape and for the 72B-shape gate (emulation W4A4, same score);
- the 72B-shape BF16 baseline with TP=2 and no offload, side by side with one GPU and CPU offload: wall, tokens/s,
  PPL (must agree);
- a BF16 baseline update of a model that does not fit one GPU's configured share (7B shape) with TP=2 against CPU
  offload on one GPU.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time

import pytest

from harness.backends import EngineSpec, make_backend
from harness.backends.gpu_memory import total_gib
from harness.session.gate import GateSession

SHARE = 0.1  # of ~140 GiB: 14 GiB, less than the 7B shape's 15.2 GB of BF16 weights
OFFLOAD_GB = 12
LAYOUTS = {"dp2": {"data_parallel_size": 2}, "tp2": {"tensor_parallel_size": 2}, "pp2": {"pipeline_parallel_size": 2}}
VARIANTS = {"bf16": ("bf16", {}), "nvfp4-marlin": ("nvfp4", {}),
            "nvfp4-emulation": ("nvfp4", {"linear_backend": "emulation"})}

# Another parallel layout is another correct engine for the same weights: tensor parallelism changes the summation
# order of every row-parallel layer and adds a bf16 all-reduce, and W4A4 emulation re-quantizes activations, so one
# flipped FP4 code carries such a difference on. The bound is the one the real-weights tests allow two correct engines
# (tests/gpu/test_real_weights.py ENGINE_TOL: twice the BF16 spread measured between vLLM variants and HF). The
# 2026-11-29 two-H200 run measured up to 1.18e-3 (1.5B-shape emulation, TP=2) and 1.06e-3 (72B-shape BF16, TP=2 vs
# offload) on random weights, whose PPL of ~1e5-1e6 magnifies every rounding; PP=2 was exact.
LAYOUT_TOL = 2 * 1.53e-3

ROUNDS = 3  # timed scoring rounds for the data-parallel speedup (one took 2.6 s and its ratio moved 1.5x-1.9x)
LAYOUT_DOCS = 50  # documents of the 1.5B-shape layout comparisons
_PPL_1P5B: dict = {}  # (variant, layout) -> PPL of the first LAYOUT_DOCS documents

pytestmark = pytest.mark.multi_gpu  # `pytest -m multi_gpu`; not part of `pytest -m gpu`


def _gpus() -> int:
    return len(total_gib())


needs_two = pytest.mark.skipif("_gpus() < 2", reason="needs 2 GPUs (device kind nvidia-h200-x2)")


def _ppl(results) -> float:
    return math.exp(sum(r.nll_sum for r in results) / sum(r.n_tokens for r in results))


@pytest.fixture(scope="module")
def tiny_scores(gpu_cfg):
    """``tiny_scores(variant, layout)``: per-document results of the tiny data (both datasets, in order) and the
    engine info, scored through the gate's own engine path; one GPU's results are kept for the comparisons."""
    cache: dict = {}

    def run(variant: str, layout: str):
        if (variant, layout) not in cache:
            precision, extra = VARIANTS[variant]
            cfg = gpu_cfg.model_copy(deep=True)
            cfg.fidelity = "this-gpu"  # "nvfp4-marlin" is what vLLM serves on Hopper; emulation is asked for by name
            kw = cfg.model.engine.setdefault(precision, {}).setdefault("vllm", {})
            kw.update(extra)
            kw.update(LAYOUTS.get(layout, {}))
            # eager, one GPU and every layout alike: these tests compare layouts, not compilation, and torch.compile
            # plus graph capture made each of the 12 engine starts of a 2-layer model ~24 s (2026-11-29)
            kw.setdefault("enforce_eager", True)
            s, eng = GateSession(cfg, backend="vllm"), None
            try:
                s.start_engine(precision)
                eng = s.engines.current
                docs = [d for n in s.dataset_names for d in s.prepared(n).token_ids]
                t0 = time.perf_counter()
                res = eng.loglikelihood_rolling(docs)
                cache[(variant, layout)] = (res, {**s.engine_info(precision), "score_s": time.perf_counter() - t0})
            finally:
                t0 = time.perf_counter()
                s.close()
                cache.get((variant, layout), ({}, {}))[1].update(
                    close_s=time.perf_counter() - t0, exitcodes=getattr(eng, "exitcodes", None))
        return cache[(variant, layout)]

    return run


# The whole two-GPU suite has to fit one session's 30 minutes of device time with its staging (2026-11-30: it did not),
# and every engine start costs ~35-47 s even for the 2-layer tiny model. So each layout x kernel is measured once:
# TP=2 and PP=2 on the three kernels at the 1.5B shape; DP=2 with BF16 at the 1.5B shape (the speedup test, PPL equal)
# and with emulation W4A4 at the 72B shape (the gate's own DP path, the same score); DP=2 with Marlin here. The tiny
# TP/PP and BF16/emulation DP tests this replaces passed on 2026-11-27 and 2026-11-29 (exact or within 4.2e-4).
TINY_DP_VARIANTS = ["nvfp4-marlin"]


@needs_two
@pytest.mark.parametrize("variant", TINY_DP_VARIANTS)
def test_tiny_data_parallel_matches_one_gpu(tiny_scores, variant, gpu_results):
    layout = "dp2"
    one, info1 = tiny_scores(variant, "one")
    many, info = tiny_scores(variant, layout)
    ppl1, ppl = _ppl(one), _ppl(many)
    worst = max(abs(a.nll_sum - b.nll_sum) / max(a.nll_sum, 1e-9) for a, b in zip(one, many))
    gpu_results(f"tiny_{layout}_vs_one_{variant}", {"ppl_one": ppl1, "ppl": ppl, "rel": abs(ppl - ppl1) / ppl1,
                                                    "worst_doc_rel": worst, "kernel": info["kernel"],
                                                    "data_parallel": info.get("data_parallel"),
                                                    "close_s": [round(info1["close_s"], 1), round(info["close_s"], 1)]})
    assert info["kernel"] == info1["kernel"]
    if variant != "bf16":  # the kernel the variant names is the one that ran
        assert {"nvfp4-marlin": "Marlin", "nvfp4-emulation": "emulation"}[variant] in info["kernel"], info["kernel"]
    assert [r.n_tokens for r in many] == [r.n_tokens for r in one]  # same documents, same order
    assert info["data_parallel"]["size"] == 2 and len(set(info["data_parallel"]["devices"])) == 2
    assert abs(ppl - ppl1) / ppl1 < 1e-5, (ppl1, ppl)  # the same per-document sums, merged in order
    # each worker closed its engine and exited on its own (2026-11-30: the in-process engines' close waited out its
    # 120 s timeout for memory its own process kept, and the workers were stopped at the deadline)
    assert info["exitcodes"] == [0, 0], info


@needs_two
def test_1p5b_data_parallel_speedup(bench_models, bench_workload, gpu_results, benchmark):
    """The throughput workload (200 x 2040 tokens) on one engine and on two (one per GPU): scoring time (the median of
    ROUNDS after a warm-up), wall with the engines' start, PPL equal. One GPU's first 50 documents are the BF16
    reference of the layout tests below (the same engine settings), so they need no engine of their own."""
    docs = bench_workload["prompts"]
    tokens = sum(len(d) - 1 for d in docs)
    out: dict = {}
    for dp in (1, 2):
        kw = {**bench_workload["engine"], "data_parallel_size": dp}
        t0 = time.perf_counter()
        eng = make_backend("vllm", EngineSpec(model=str(bench_models["bf16"]), precision="bf16",
                                              max_model_len=bench_workload["max_model_len"], engine_kwargs=kw))
        start = time.perf_counter() - t0
        rounds: list[float] = []

        def timed():
            t = time.perf_counter()
            r = eng.loglikelihood_rolling(docs)
            rounds.append(time.perf_counter() - t)
            return r

        try:
            eng.loglikelihood_rolling(docs[:4])  # warm-up
            res = (benchmark.pedantic(timed, rounds=ROUNDS, iterations=1) if dp == 2
                   else [timed() for _ in range(ROUNDS)][-1])
        finally:
            eng.close()
        score_s = statistics.median(rounds)
        out[f"dp{dp}"] = {"engine_start_s": round(start, 1), "score_s": round(score_s, 2),
                          "rounds_s": [round(x, 2) for x in rounds], "tok_s": round(tokens / score_s),
                          # start to close with one round, as the earlier runs measured it
                          "wall_s": round(time.perf_counter() - t0 - sum(rounds) + score_s, 1), "ppl": _ppl(res)}
        if dp == 1:
            _PPL_1P5B[("bf16", "one")] = _ppl(res[:LAYOUT_DOCS])
    out["speedup_scoring"] = round(out["dp1"]["score_s"] / out["dp2"]["score_s"], 2)
    out["speedup_wall"] = round(out["dp1"]["wall_s"] / out["dp2"]["wall_s"], 2)
    gpu_results("throughput_1p5b_dp2_vs_dp1", out)
    benchmark.extra_info.update(out)
    assert abs(out["dp2"]["ppl"] - out["dp1"]["ppl"]) / out["dp1"]["ppl"] < 1e-5, out



@needs_two
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_1p5b_parallel_layout_matches_one_gpu(bench_models, bench_workload, variant, layout, gpu_results):
    precision, extra = VARIANTS[variant]
    docs = bench_workload["prompts"][:LAYOUT_DOCS]
    ppl = {}
    for name in ("one", layout):
        if (variant, name) not in _PPL_1P5B:  # one GPU's number is shared by the layouts
            kw = {**bench_workload["engine"], **extra, **LAYOUTS.get(name, {})}
            eng = make_backend("vllm", EngineSpec(model=str(bench_models[precision]), precision=precision,
                                                  max_model_len=bench_workload["max_model_len"], engine_kwargs=kw,
                                                  fidelity="this-gpu"))
            try:
                _PPL_1P5B[(variant, name)] = _ppl(eng.loglikelihood_rolling(docs))
            finally:
                eng.close()
        ppl[name] = _PPL_1P5B[(variant, name)]
    gpu_results(f"throughput_1p5b_{layout}_vs_one_{variant}", ppl)
    assert abs(ppl[layout] - ppl["one"]) / ppl["one"] < LAYOUT_TOL, ppl


@needs_two
def test_72b_shape_on_two_gpus(tmp_path, gpu_results, benchmark):
    """At the 72B shape, through the harness's commands: the BF16 baseline over two GPUs (TP=2, no offload) and on
    one GPU with CPU offload (configs/qwen2.5-72b-shape.yaml), same synthetic weights: wall, tokens/s, PPL agree;
    then the NVFP4 gate on one GPU and with one engine per GPU (data_parallel_size=2): time to verdict, same score."""
    from test_scale_72b import CONFIG

    if min(total_gib()) < 130:
        pytest.skip("the 72B shape needs H200-class GPUs (~140 GiB each)")
    synth = _synth(gpu_results)
    base = tmp_path / "baselines"
    common = ["--config", str(CONFIG), "--set", f"baselines_dir={base}"]
    tp2 = ("model.engine.bf16.vllm={dtype: bfloat16, tensor_parallel_size: 2, gpu_memory_utilization: 0.92, "
           "max_num_batched_tokens: 16384, max_num_seqs: 64, enforce_eager: true, seed: 0}")
    runs: dict = {}
    for name, args, env in (
            ("bf16_tp2", ["baseline", "update", "--force", *common, "--set", tp2], {}),
            ("bf16_offload_1gpu", ["baseline", "update", "--force", *common], {"CUDA_VISIBLE_DEVICES": "0"}),
            ("gate_1gpu", ["gate", *common, "--report-dir", tmp_path / "r1"], {"CUDA_VISIBLE_DEVICES": "0"}),
            ("gate_dp2", ["gate", *common, "--set", "model.engine.nvfp4.vllm.data_parallel_size=2",
                          "--report-dir", tmp_path / "r2"], {})):
        t0 = time.time()
        r = (benchmark.pedantic(_harness_env, args=(env, *args), rounds=1, iterations=1) if name == "gate_dp2"
             else _harness_env(env, *args))
        wall = time.time() - t0
        if name.startswith("bf16"):
            assert r.returncode == 0, r.stderr[-4000:]
            b = [json.loads((base / "qwen2.5-72b-shape" / f"{n}.json").read_text()) for n in ("wikitext2", "ultrachat")]
            tokens, eval_s = sum(x["tokens"] for x in b), sum(x["provenance"]["eval_s"] for x in b)
            runs[name] = {"wall_s": round(wall, 1), "engine_start_s": b[0]["provenance"]["engine_start_s"],
                          "tok_s": round(tokens / eval_s), "tokens": tokens,
                          "ppl": math.exp(sum(x["nll"] * x["tokens"] for x in b) / tokens),
                          "offload": (b[0]["provenance"].get("offload") or {}).get("offloaded_gib")}
        else:
            assert r.returncode in (0, 1), r.stderr[-4000:]  # a verdict either way
            rdir = tmp_path / ("r1" if name == "gate_1gpu" else "r2")
            rep = json.loads(max(rdir.glob("*/report.json"), key=lambda p: p.stat().st_mtime).read_text())
            eval_s = sum(d["nvfp4"]["eval_s"] for d in rep["datasets"])
            runs[name] = {"wall_to_verdict_s": round(wall, 1), "engine_start_s": rep["engine"]["engine_start_s"],
                          "eval_s": round(eval_s, 1), "tok_s": round(rep["overall"]["nvfp4"]["tokens"] / eval_s),
                          "score": rep["overall"]["score"], "kernel": rep["kernel"], "exit": r.returncode,
                          "data_parallel": rep["engine"].get("data_parallel")}
    runs["gate_speedup_wall"] = round(runs["gate_1gpu"]["wall_to_verdict_s"] / runs["gate_dp2"]["wall_to_verdict_s"], 2)
    gpu_results("multi_gpu_72b_shape", {"synth": str(synth), **runs})
    benchmark.extra_info.update(runs)
    off, tp = runs["bf16_offload_1gpu"], runs["bf16_tp2"]
    assert abs(tp["ppl"] - off["ppl"]) / off["ppl"] < LAYOUT_TOL, runs
    assert tp["offload"] in (None, 0) and off["offload"] > 20, runs
    # DP=2 scores each document on one of two identical engines, but the shards (documents of unequal length, shared
    # out by length) make other batches than one engine does, and vLLM's kernels are not batch-invariant: the
    # 2026-11-29 run gave 100.0515 vs 100.0579. Same verdict, same score within the engines' tolerance.
    one, dp2 = runs["gate_1gpu"], runs["gate_dp2"]
    assert dp2["exit"] == one["exit"], runs
    assert abs(dp2["score"] - one["score"]) / one["score"] < LAYOUT_TOL, runs


def _synth(gpu_results):
    """The 72B-shape NVFP4 checkpoint and BF16 view in $HARNESS_SYNTH_DIR (made once, as test_scale_72b does)."""
    from test_scale_72b import LIKE, _harness

    d = os.environ.get("HARNESS_SYNTH_DIR")
    assert d, "set HARNESS_SYNTH_DIR (tests/gpu/h200.sh does)"
    if not os.path.exists(os.path.join(d, "bf16", "harness_view.json")):
        t0 = time.time()
        r = _harness("synth-checkpoint", "--like", LIKE, "--bf16-view", f"{d}/bf16", "--force", f"{d}/nvfp4")
        assert r.returncode == 0, r.stderr[-3000:]
        gpu_results("synth_72b_multi", {"wall_s": round(time.time() - t0, 1)})
    return d


def _harness_env(env: dict, *args: str):
    import subprocess
    import sys

    from test_scale_72b import ROOT

    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True, timeout=1200,
                          cwd=ROOT, env={**os.environ, **env})


@needs_two
def test_7b_shape_baseline_update_with_tp2_matches_offload(model_7b, update_bf16, gpu_results, benchmark):
    tp = benchmark.pedantic(update_bf16, args=(model_7b, {"gpu_memory_utilization": SHARE,
                                                         "tensor_parallel_size": 2}, "tp2"),
                            rounds=1, iterations=1)
    off = update_bf16(model_7b, {"gpu_memory_utilization": SHARE, "cpu_offload_gb": OFFLOAD_GB}, "offload")
    gpu_results("7b_tp2_vs_offload", {"tp2": tp, "offload": off})
    assert abs(tp["ppl"] - off["ppl"]) / off["ppl"] < LAYOUT_TOL, (tp, off)
