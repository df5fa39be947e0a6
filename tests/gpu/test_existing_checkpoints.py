"""Gating checkpoints users already have, on the GPU: NVIDIA ModelOpt's NVFP4 layout and compressed-tensors', the
same synthetic weights in each (Qwen2.5-0.5B shape), load in vLLM and score alike; the gate runs on the ModelOpt
checkpoint as it is, against BF16 baselines of its own dequantization (a BF16 view loaded through the harness's
load format), and reads the scheme and the kernel off the loaded model."""
from __future__ import annotations

import math

import pytest

from harness.backends import EngineSpec, backend_class
from harness.session.gate import GateSession

pytestmark = pytest.mark.gpu

SHAPE = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    from harness.models.shapes import KNOWN_SHAPES
    from harness.models.synth import SynthSpec
    from harness.models.synth_write import write_checkpoint, write_dequant_view

    root = tmp_path_factory.mktemp("layouts")
    for layout in ("compressed-tensors", "modelopt"):
        write_checkpoint(SynthSpec(config=KNOWN_SHAPES[SHAPE], layout=layout, like=SHAPE), root / layout,
                         device="cuda", progress=False)
    write_dequant_view(root / "modelopt", root / "bf16")
    return root


def test_modelopt_and_compressed_tensors_layouts_score_alike_in_vllm(layouts, bench_workload, gpu_results):
    docs = bench_workload["prompts"][:40]
    out = {}
    for layout in ("compressed-tensors", "modelopt"):
        eng = backend_class("vllm")(EngineSpec(model=str(layouts / layout), precision="nvfp4",
                                               max_model_len=bench_workload["max_model_len"],
                                               engine_kwargs=bench_workload["engine"], fidelity="this-gpu"))
        try:
            res = eng.loglikelihood_rolling(docs)
            info = eng.info()
        finally:
            eng.close()
        out[layout] = {"ppl": math.exp(sum(r.nll_sum for r in res) / sum(r.n_tokens for r in res)),
                       "kernel": info["kernel"], "kernel_classes": info["kernel_classes"]}
    gpu_results("layouts_0p5b", out)
    ct, mo = out["compressed-tensors"], out["modelopt"]
    assert "Marlin W4A16" in ct["kernel"] and "Marlin W4A16" in mo["kernel"], out
    assert abs(ct["ppl"] - mo["ppl"]) / ct["ppl"] < 1e-4, out  # the same numbers, stored two ways


def test_gate_an_existing_modelopt_checkpoint(layouts, gpu_cfg, gpu_results):
    cfg = gpu_cfg.model_copy(deep=True)
    cfg.name = "qwen2.5-0.5b-shape-modelopt"
    cfg.fidelity = "this-gpu"  # Marlin W4A16 against the exact dequantization of its own weights: float noise only
    cfg.model.path, cfg.model.checkpoint, cfg.model.tokenizer = str(layouts / "bf16"), str(layouts / "modelopt"), \
        "builtin:tiny"
    w = GateSession(cfg, backend="vllm", update_baselines=True, force=True)
    try:
        w.update_baselines()
    finally:
        w.close()
    s = GateSession(cfg, backend="vllm")
    try:
        ck = s.checkpoint()
        path, info = ck.path, ck.info
        verdict = s.verdict()
        engine = s.engine_info("nvfp4")
    finally:
        s.close()
    o = s.judgement(None).comparison
    dist = s.judgement(None).distributions  # random weights: near-uniform distributions over 152k tokens
    gpu_results("gate_existing_modelopt_0p5b", {"scheme": info["scheme"], "layout": info["layout"],
                                                "kernel": engine["kernel"], "score": o.score,
                                                "ppl": o.ppl_model, "passed": verdict.passed,
                                                "kld_mean": dist["kld"]["mean"], "top1_pct": dist["top1_pct"],
                                                "verdict": verdict.summary()})
    assert info["existing"] and info["scheme"] == "NVFP4" and info["layout"] == "modelopt" and path == layouts / "modelopt"
    assert [k[1] for k in s.engines.opened] == ["nvfp4"]  # no quantization, no BF16 engine in the gate
    assert "Marlin W4A16" in engine["kernel"]
    assert abs(o.score - 100) < 1.0, o  # Marlin against its own exact dequantization: float noise only
