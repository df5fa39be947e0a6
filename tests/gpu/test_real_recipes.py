"""Which recipe, which layers, on real weights: SmolLM2-135M-Instruct on one H200 through the harness's own path
(`pytest -m recipes`, about 10 minutes; not part of `-m gpu`). README "Which recipe" and "Which layers hurt".

- `harness compare` of nvfp4 (round to nearest), nvfp4-gptq, nvfp4-awq and nvfp4-keep-down-proj against the vLLM
  BF16 baseline, W4A4 as the scheme computes it (fidelity: scheme, vLLM emulation);
- `harness sensitivity --by layer` on the GPU (hf backend, bf16) on exactly the gate's documents, its suggestion to
  a target written as a recipe (--write-recipe) and gated through llm-compressor and vLLM: the gated score's interval
  holds the score the sensitivity run measured for it.

Numbers go to ``$HARNESS_GPU_RESULTS`` (docs/results).
"""
from __future__ import annotations

import json
import time

import pytest

from harness.session.gate import GateSession

pytestmark = pytest.mark.recipes

RECIPES = ["nvfp4", "nvfp4-gptq", "nvfp4-awq", "nvfp4-keep-down-proj"]
TARGET = 70.0  # the CPU run (2026-11-29) reached it with 5 layers in BF16; W4A4 on every Linear scores ~63 here


def test_real_recipes_compared(real_cfg, real_baseline, gpu_results, tmp_path):
    from harness.recipes import compare

    def make(recipe):
        s = GateSession(real_cfg, backend="vllm", recipe=recipe)
        s.preflight(tmp_path)
        return s

    t0 = time.time()
    rep = compare.run(make, RECIPES)
    rep = {"model": real_cfg.name, "config": real_cfg.source_path, "backend": "vllm",
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.time() - t0, 1), **rep}
    out = compare.write(rep, real_cfg.path_of("reports_dir"))
    gpu_results("real_compare", {**rep, "report": str(out)})
    errors = {r["recipe"]: r["error"] for r in rep["recipes"] if "error" in r}
    assert not errors, errors  # llm-compressor 0.14's GPTQ and AWQ both take NVFP4 (read in their sources)
    rows = {r["recipe"]: r for r in rep["recipes"]}
    pairs = {(p["a"], p["b"]): p for p in rep["pairs"]}
    assert len(pairs) == 6
    assert all("emulation" in r["kernel"] for r in rows.values()), rows
    # down_proj left in BF16: fewer FP4 Linears, bigger checkpoint, and better (CPU: 65.0 -> 74.3, KL 0.25 -> 0.19)
    assert rows["nvfp4-keep-down-proj"]["bytes"] > rows["nvfp4"]["bytes"]
    assert pairs[("nvfp4", "nvfp4-keep-down-proj")]["word"] == "worse", pairs[("nvfp4", "nvfp4-keep-down-proj")]


def test_real_layer_sensitivity_and_its_suggestion_gated(real_cfg, real_baseline, gpu_results, tmp_path, capsys):
    from harness.cli.main import main

    recipes, reports = tmp_path / "recipes", tmp_path / "reports"
    recipes.mkdir()
    sets = [f"baselines_dir={real_cfg.baselines_dir}", f"recipes_dir={recipes}"]
    t0 = time.time()
    rc = main(["sensitivity", "--config", real_cfg.source_path, *[x for s in sets for x in ("--set", s)],
               "--by", "layer", "--texts", "200", "--max-tokens", str(real_cfg.model.max_model_len - 8),
               "--target", str(TARGET), "--write-recipe", "smollm2-suggested", "--report-dir", str(reports)])
    wall = time.time() - t0
    out = capsys.readouterr()
    assert rc == 0, out.out[-3000:] + out.err[-3000:]
    sens = json.loads(next(reports.glob("*/sensitivity.json")).read_text())
    s = sens["suggestion"]
    predicted = s["score"]

    cfg = real_cfg.model_copy(deep=True)
    cfg.recipes_dir = str(recipes)
    g = GateSession(cfg, backend="vllm", recipe="smollm2-suggested")
    try:
        for n in g.dataset_names:
            g.score(n)
        o = g.judgement(None).comparison
        kernel = g.engine_info("nvfp4").get("kernel")
    finally:
        g.close()
    row = {"wall_s": round(wall, 1), "device": sens["device"], "dtype": sens["dtype"], "texts": sens["texts"],
           "tokens": sens["tokens"], "seconds_per_variant": sens["seconds_per_variant"], "setup_s": sens["setup_s"],
           "all_quantized": sens["all_quantized"], "ranking": sens["ranking"][:10], "suggestion": s,
           "gated": {"score": o.score, "low": o.interval.low, "high": o.interval.high, "kernel": kernel}}
    gpu_results("real_sensitivity_by_layer", row)
    assert sens["device"] != "cpu" and len(sens["depth_order"]) == 30  # SmolLM2: 30 decoder layers, on the GPU
    assert s["reached"] and s["units"], s
    assert o.interval.low <= predicted <= o.interval.high, (predicted, row["gated"])
