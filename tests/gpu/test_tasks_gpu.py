"""Tasks on the GPU with real weights: SmolLM2-135M-Instruct (configs/smollm2-135m.yaml) through vLLM, the harness's
own path.

- BF16 on the full splits of the six log-likelihood tasks and 200 GSM8K items, written as task baselines by the update
  flow, each task well above chance (a prompt or scoring fault lands at chance);
- gates of NVFP4 W4A4 (vLLM emulation, the scheme) and NVFP4A16 with the tasks in the gate's own engine (one start),
  their task tables (recovery, flips, McNemar p), and the time to verdict against the perplexity-only gate;
- vLLM and transformers on the same BF16 items: the per-request log-likelihoods and how many answers flip between two
  BF16 engines (the floor under any quantized flip count);
- GSM8K through vLLM's generate against transformers' on a few items;
- a benchmark: task items per second through the backend against bare vLLM on the same requests (goal >= 0.9x).

Numbers go to ``$HARNESS_GPU_RESULTS`` (docs/results).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from harness.config.sections import TaskSpecConfig
from harness.session.gate import GateSession

pytestmark = pytest.mark.gpu

LOGLIKELIHOOD = ["arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "lambada_openai"]
# chance: arc 4 choices (a few have 3 or 5), piqa and winogrande 2, hellaswag 4, lambada's greedy word far below 1%
ABOVE = {"arc_easy": 0.40, "arc_challenge": 0.25, "piqa": 0.58, "hellaswag": 0.30, "winogrande": 0.50,
         "lambada_openai": 0.10}
GSM8K_ITEMS = 200


BF16_ENGINES = (("vllm", {"dtype": "bfloat16", "gpu_memory_utilization": 0.3, "enforce_eager": True, "seed": 0}),
                ("hf", {"dtype": "bfloat16"}))


def bf16_engines(cfg):
    """(name, started engine) for vLLM then transformers on the config's BF16 model, one alive at a time."""
    from harness.backends import EngineSpec, make_backend

    model = cfg.resolve(cfg.model.path)
    for backend, kw in BF16_ENGINES:
        with make_backend(backend, EngineSpec(model=model, precision="bf16", max_model_len=2048,
                                              engine_kwargs=kw)) as eng:
            yield backend, eng


@pytest.fixture(scope="session")
def task_cfg(real_cfg):
    """configs/smollm2-135m.yaml as shipped, tasks included (real_cfg drops them for the perplexity tests), with BF16
    baselines of its own made here."""
    from harness.config.load import load_config

    cfg = load_config(real_cfg.source_path)
    cfg.baselines_dir = str(Path(real_cfg.baselines_dir).parent / "task-baselines")
    cfg.reports_dir, cfg.backend = real_cfg.reports_dir, "vllm"
    assert sorted(cfg.tasks) == sorted([*LOGLIKELIHOOD, "gsm8k"]) and cfg.tasks["gsm8k"].limit == GSM8K_ITEMS
    assert all(cfg.tasks[n].limit is None for n in LOGLIKELIHOOD)  # whole splits
    return cfg


@pytest.fixture(scope="session")
def task_baselines(task_cfg, gpu_results):
    s = GateSession(task_cfg, backend="vllm", update_baselines=True, force=True)
    t0 = time.time()
    try:
        s.update_baselines()
        out = {n: {"metrics": s.task_score(n, "bf16").metrics(), "n": s.prepared_task(n).n,
                   "requests": len(s.prepared_task(n).requests), "eval_s": round(s.task_score(n, "bf16").eval_s, 2)}
               for n in s.task_names}
        info = s.engine_info("bf16")
    finally:
        s.close()
    gpu_results("tasks_bf16_vllm", {"tasks": out, "wall_s": round(time.time() - t0, 1),
                                    "device": info.get("device"), "engine_start_s": info.get("engine_start_s")})
    return out


def test_bf16_tasks_on_full_splits_are_above_chance(task_baselines):
    for n, floor in ABOVE.items():
        m = task_baselines[n]["metrics"]
        gated = m.get("acc_norm", m.get("acc"))
        assert gated > floor, (n, m)
    assert task_baselines["hellaswag"]["n"] == 10042 and task_baselines["lambada_openai"]["n"] == 5153
    assert task_baselines["gsm8k"]["n"] == GSM8K_ITEMS


@pytest.mark.parametrize("recipe", ["nvfp4", "nvfp4a16"])
def test_gate_scores_tasks_in_its_engine_with_flips(task_cfg, task_baselines, recipe, gpu_results, tmp_path):
    from harness.stages.run import run_gate

    s = GateSession(task_cfg, backend="vllm", recipe=recipe)
    try:
        done = run_gate(s, tmp_path)
    finally:
        s.close()
    assert len(s.engines.opened) == 1, s.engines.opened  # the tasks rode in the gate's engine
    rows = {t["task"]: t for t in done.report["tasks"]}
    assert set(rows) == set(task_cfg.tasks)
    for t in rows.values():
        p = t["paired"]
        assert p["n"] == task_baselines[t["task"]]["n"]
        assert 0 <= p["p_value"] <= 1 and p["lost"] + p["gained"] == round(p["flips_pct"] * p["n"] / 100)
    for t in ("hellaswag", "lambada_openai"):  # both recipes cost answers there (H100, 2026-12-07: the whole paired
        ci = rows[t]["paired"]["recovery_interval"]  # interval under 1: W4A4 0.932 and 0.678, W4A16 0.974, 0.779)
        assert ci[1] < 1.0 and rows[t]["paired"]["lost"] > rows[t]["paired"]["gained"], (t, rows[t]["paired"])
    # a perplexity-only gate of the same (now cached) checkpoint, for the time to verdict
    plain = task_cfg.model_copy(deep=True)
    plain.tasks = {}
    s2 = GateSession(plain, backend="vllm", recipe=recipe)
    t0 = time.time()
    try:
        run_gate(s2, tmp_path / "plain")
    finally:
        s2.close()
    gpu_results(f"tasks_gate_{recipe}", {
        "kernel": done.report["kernel"], "score": done.report["overall"]["score"],
        "tasks": {n: {"metric": t["metric"], "bf16": t["bf16"], "quantized": t["nvfp4"], "paired": t["paired"]}
                  for n, t in rows.items()},
        "contexts_shared": {n: t.get("contexts_shared") for n, t in rows.items()},
        "time": done.report["time"], "plain_gate_wall_s": round(time.time() - t0, 1),
        "verdict": done.verdict.summary()})


def test_vllm_and_hf_bf16_task_loglikelihoods_and_their_flips(task_cfg, task_baselines, gpu_results):
    """Two BF16 engines on the same requests (arc_challenge, hellaswag's first 1,000 items): how far their
    log-likelihoods lie apart per token, and how many answers flip between them: the noise floor of flips."""
    from harness.tasks.paired import paired
    from harness.tasks.results import score_task

    cfg = task_cfg.model_copy(deep=True)
    cfg.tasks = {"arc_challenge": TaskSpecConfig(), "hellaswag": TaskSpecConfig(limit=1000)}
    s = GateSession(cfg, backend="vllm")
    preps = {n: s.prepared_task(n) for n in cfg.tasks}
    out = {}
    scores = {backend: {n: score_task(eng, p) for n, p in preps.items()} for backend, eng in bf16_engines(task_cfg)}
    for n, p in preps.items():
        a, b = scores["vllm"][n], scores["hf"][n]
        per_tok = [abs(x - y) / len(p.requests[j][1]) for j, (x, y) in
                   enumerate(zip((v for ll in a.lls for v in ll), (v for ll in b.lls for v in ll)))]
        per_tok.sort()
        metric = "acc_norm"
        pr = paired(a.correct[metric], b.correct[metric])
        out[n] = {"median_abs_per_token": per_tok[len(per_tok) // 2], "p99_abs_per_token":
                  per_tok[int(0.99 * (len(per_tok) - 1))], "vllm": a.metrics(), "hf": b.metrics(),
                  "flips_pct": pr.flips_pct, "lost": pr.lost, "gained": pr.gained, "p_value": pr.p_value}
        assert per_tok[len(per_tok) // 2] < 0.05, out[n]  # bf16 logits: ~2^-8 relative, a few hundredths per token
        assert pr.flips_pct < 10.0, out[n]
    gpu_results("tasks_vllm_vs_hf_bf16", out)


def test_gsm8k_through_vllm_generate_matches_transformers(task_cfg, task_baselines, gpu_results):
    from harness.tasks.definitions import UNTIL, cut_at_stop, strict_match

    s = GateSession(task_cfg, backend="vllm")
    prep = s.prepared_task("gsm8k")
    prompts = [list(p) for p in prep.prompts[:5]]
    texts = {backend: [cut_at_stop(t) for t in eng.generate_until(prompts, UNTIL, 256)]
             for backend, eng in bf16_engines(task_cfg)}
    same_start = sum(a[:40] == b[:40] for a, b in zip(texts["vllm"], texts["hf"]))
    gpu_results("tasks_gsm8k_generate", {"vllm": texts["vllm"], "hf": texts["hf"], "same_first_40_chars": same_start,
                                         "answers": [strict_match(t) for t in texts["vllm"]],
                                         "bf16_exact_match": task_baselines["gsm8k"]["metrics"]})
    assert all(t.strip() for t in texts["vllm"])
    assert same_start >= 3, texts  # greedy from the same weights: bf16 kernels may part late, not at the start


def test_task_items_per_second_against_bare_vllm(task_cfg, task_baselines, benchmark, gpu_results):
    """arc_easy's 9,492 distinct requests through VLLMBackend.loglikelihood (contexts shared through vLLM's prefix
    cache, the default) against one bare ``LLM.generate`` of the same token prompts with prompt_logprobs=1, one request
    per continuation, what vLLM does unless told to read its cache; and the backend with sharing off. One engine, its
    prefix cache emptied before each run."""
    from vllm import SamplingParams

    from harness.backends import EngineSpec, make_backend

    s = GateSession(task_cfg, backend="vllm")
    prep = s.prepared_task("arc_easy")
    reqs = [(list(c), list(t)) for c, t in dict.fromkeys(prep.requests)]
    with make_backend("vllm", EngineSpec(model=task_cfg.resolve(task_cfg.model.path), precision="bf16",
                                         max_model_len=2048, engine_kwargs={"dtype": "bfloat16",
                                         "gpu_memory_utilization": 0.3, "enforce_eager": True, "seed": 0})) as eng:
        params = SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False, temperature=0.0,
                                flat_logprobs=True)
        prompts = [{"prompt_token_ids": c + t} for c, t in reqs]
        eng.llm.generate(prompts[:64], params, use_tqdm=False)  # both paths warm
        eng.llm.reset_prefix_cache()
        t0 = time.time()
        eng.llm.generate(prompts, params, use_tqdm=False)
        bare_s = time.time() - t0
        eng.kwargs["enable_prefix_caching"] = False  # the backend's own path, one request per continuation
        t0 = time.time()
        unshared = eng.loglikelihood(reqs)
        unshared_s = time.time() - t0
        eng.kwargs["enable_prefix_caching"] = True
        before = dict(eng.shared)
        t0 = time.time()
        res = benchmark.pedantic(eng.loglikelihood, args=(reqs,), rounds=1, iterations=1)
        ours_s = time.time() - t0
        shared = {k: eng.shared[k] - before[k] for k in before}
    assert len(res) == len(reqs) == len(unshared)
    per_tok = sorted(abs(a[0] - b[0]) / len(t) for a, b, (_, t) in zip(res, unshared, reqs))
    same_greedy = sum(a[1] == b[1] for a, b in zip(res, unshared)) / len(reqs)
    ratio = bare_s / ours_s
    benchmark.extra_info.update({
        "requests": len(reqs), "bare_vllm_s": round(bare_s, 3), "ours_s": round(ours_s, 3),
        "ours_unshared_s": round(unshared_s, 3), "ours_vs_bare": round(ratio, 3),
        "unshared_vs_bare": round(bare_s / unshared_s, 3), "items_per_s": round(prep.n / ours_s, 1),
        "shared": shared, "shared_vs_unshared_median_abs_per_token": per_tok[len(per_tok) // 2],
        "shared_vs_unshared_max_abs_per_token": per_tok[-1], "same_greedy": same_greedy})
    gpu_results("tasks_items_per_s", dict(benchmark.extra_info))
    assert math.isfinite(ratio)
    # ARC's choices share a context: vLLM read a good part of the tokens from its cache (block-16 arithmetic on these
    # requests: 45% of 300,756), and the numbers are those of the unshared path up to bf16 attention order
    assert shared["cached_tokens"] > 0.25 * shared["tokens"], shared
    assert per_tok[len(per_tok) // 2] < 0.01 and same_greedy > 0.99, benchmark.extra_info


CARD = {"hellaswag_card": 40.9, "piqa_card": 66.3}  # SmolLM2-135M-Instruct's model card (lighteval); ARC: average 37.3


def test_tasks_as_the_model_card_scored_them(real_cfg, gpu_results, tmp_path):
    """configs/smollm2-135m-card.yaml: lighteval's prompts and the chat template, BF16, whole splits, beside lm-eval's
    hellaswag prompt; the card's figures are within a few points (our weights are the Q4_1 GGUF's, dequantized)."""
    from harness.config.load import load_config

    cfg = load_config(Path(real_cfg.source_path).parent / "smollm2-135m-card.yaml")
    cfg.baselines_dir, cfg.reports_dir, cfg.backend = str(tmp_path / "baselines"), real_cfg.reports_dir, "vllm"
    s = GateSession(cfg, backend="vllm", update_baselines=True, force=True)
    try:
        s.update_baselines()
        out = {n: s.task_score(n, "bf16").metrics() for n in s.task_names}
        shared = {n: s.task_score(n, "bf16").shared for n in s.task_names}
    finally:
        s.close()
    arc = (out["arc_easy_card"]["acc_norm"] + out["arc_challenge_card"]["acc_norm"]) / 2
    gpu_results("tasks_model_card_setting", {"tasks": out, "arc_average_acc_norm": arc, "card": {**CARD, "arc": 37.3},
                                             "shared": shared})
    for n, card in CARD.items():
        assert abs(100 * out[n]["acc_norm"] - card) < 5.0, (n, out[n], card)
    assert abs(100 * arc - 37.3) < 5.0, arc
