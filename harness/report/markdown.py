"""The gate report's Markdown: tables (datasets, overall, distributions, token detail, baseline updates, time) and
the page, rendered from report.json alone, so `harness report run.json` re-renders old runs."""
from __future__ import annotations

from harness.report.cells import ci_label, fmt, md_table, qlabel
from harness.report.sections import (DISTRIBUTION_NOTE, TASK_NOTE, baseline_diff_table, distribution_table,
                                     most_changed, task_table, token_detail_table)
from harness.timings import table


def lm_eval_table(rep: dict) -> str:
    rows = [[d["dataset"], prec.upper(), fmt(d[prec].get("word_perplexity")), fmt(d[prec].get("byte_perplexity")),
             fmt(d[prec].get("bits_per_byte"))] for d in rep["datasets"] for prec in ("bf16", "nvfp4")]
    return md_table(["dataset", "precision", "word_perplexity", "byte_perplexity", "bits_per_byte"], rows, "llrrr")


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def dataset_table(rep: dict) -> str:
    rows = []
    for d in rep["datasets"]:
        for prec in ("bf16", "nvfp4"):
            r = d[prec]
            label = "BF16" if prec == "bf16" else f"{qlabel(rep)} ({rep.get('kernel') or '?'})"
            rows.append([d["dataset"], label, fmt(r["ppl"], 6), fmt(r["nll"], 6), r["tokens"], r["kept_texts"],
                         fmt(r.get("eval_s"), 2)])
    return md_table(["dataset", "precision", "PPL", "NLL", "tokens", "kept_texts", "eval_s"], rows, "llrrrrr")


def overall_table(rep: dict) -> str:
    o = rep["overall"]
    ci = o.get("interval")
    ci_s = f"{ci['low']:.2f} .. {ci['high']:.2f}" if ci else "- (no per-document NLLs)"
    whole = md_table(["precision", "PPL", "NLL", "tokens", "relative score", ci_label(rep), "min"], [
        ["BF16", fmt(o["bf16"]["ppl"], 6), fmt(o["bf16"]["nll"], 6), o["bf16"]["tokens"], "100.00", "", ""],
        [qlabel(rep), fmt(o["nvfp4"]["ppl"], 6), fmt(o["nvfp4"]["nll"], 6), o["nvfp4"]["tokens"], f"{o['score']:.2f}",
         ci_s, _min(o)]], "lrrrrlr")
    per = [[d["dataset"], f"{d['score']:.2f}",
            f"{d['interval']['low']:.2f} .. {d['interval']['high']:.2f}" if d.get("interval") else "-", _min(d),
            _mdd(d.get("interval"))] for d in [*rep["datasets"], {"dataset": "overall", **o}]]
    return whole + "\n\n" + md_table(["dataset", "relative score", ci_label(rep), "min", "MDD (points)"], per,
                                     "lrlrr")


def _mdd(interval: dict | None) -> str:
    """The minimum detectable difference of a score (one-sided alpha 0.05, power 0.8), from its bootstrap interval."""
    return f"{interval['mdd']:.2f}" if interval and interval.get("mdd") is not None else "-"


def _min(row: dict) -> str:
    """A threshold and where it came from (--min-score, config, recipe NAME, default)."""
    src = row.get("threshold_source")
    return fmt(row.get("threshold"), 2) + (f" ({src})" if src else "")


def render_markdown(rep: dict) -> str:
    ck = rep["checkpoints"]
    verdict = "PASSED" if rep["gate"]["passed"] else "FAILED"
    parts = [
        f"# NVFP4 quality gate: {rep['model']} / {rep['recipe']}: {verdict}",
        "",
        f"- created: {rep['created']}; config: `{rep['config']}`",
        f"- backend: {rep['backend']}; {qlabel(rep)} kernel: **{rep.get('kernel') or '?'}**; max_model_len {rep['max_model_len']}",
        f"- checkpoints on disk: BF16 {_bf16_size(ck['bf16'])}, {qlabel(rep)} {_size(ck['nvfp4']['bytes'])} ({_provenance(ck)})",
        *engine_lines(rep),
        *baseline_lines(rep),
        f"- gate on: {'bootstrap lower bound' if rep['gate']['use'] == 'lower' else 'point estimate'}",
        *kernel_notes(rep.get("kernel") or ""),
        "",
        "## Per dataset",
        "",
        dataset_table(rep),
        "",
        "## Overall (token-weighted)",
        "",
        overall_table(rep),
        "",
        (f"(chart not drawn: {rep['chart_error']})" if rep.get("chart_error") else "![relative score](chart.svg)"),
        "",
        "## lm-evaluation-harness metrics (on the scored texts)",
        "",
        lm_eval_table(rep),
        "",
        "## Verdict",
        "",
        "```",
        rep["gate"]["summary"],
        "```",
    ]
    if rep.get("tasks"):
        parts += ["", "## Tasks (the same items under BF16 and quantized)", "", task_table(rep), "", TASK_NOTE]
    if rep.get("top_k"):
        parts += ["", f"## Next-token distributions against BF16 (top-{rep['top_k']})", "",
                  distribution_table(rep), "", DISTRIBUTION_NOTE, "", "### Most changed", "", most_changed(rep)]
    if any(d.get("token_detail") for d in rep["datasets"]):
        parts += ["", "## Per-token detail", "", token_detail_table(rep)]
    if rep.get("baseline_updates"):
        parts += ["", "## Baseline updates", "", baseline_diff_table(rep["baseline_updates"])]
    if rep.get("time"):
        parts += ["", "## Time", "", TIME_NOTE, "", table(rep["time"])]
    return "\n".join(parts) + "\n"


TIME_NOTE = ("Where this run's time went, stage by stage (exclusive: starting an engine inside scoring counts as "
             "engine start). quantize is the cache lookup when the checkpoint was cached; other is what no stage "
             "claims: imports, baselines, closing engines. A row in parentheses ran in another process beside a "
             "stage (the data prepared while the engine started): not part of the sum.")


def _bf16_size(ck: dict) -> str:
    if ck.get("view_of"):
        return f"none of its own (a dequantized view of `{ck['view_of']}`)"
    return _size(ck.get("bytes"))


def _provenance(ck: dict) -> str:
    nv = ck["nvfp4"]
    if nv.get("existing"):
        return "an existing checkpoint, gated as it is"
    return f"quantization {'cache hit' if nv.get('cache_hit') else 'built'}" + \
        (f", {nv['quantize_s']} s" if nv.get("quantize_s") else "")


def engine_lines(rep: dict) -> list[str]:
    """Engine start (and where its seconds went) for both precisions, how the engine was spread over GPUs, and any CPU
    offload: speed, not numbers."""
    out = []
    for label, e in ((qlabel(rep), rep.get("engine") or {}), ("BF16 (baseline run)", rep.get("bf16_engine") or {})):
        if not e.get("engine_start_s"):
            continue
        b = e.get("engine_start") or {}
        parts = [f"{k} {b[k]:.1f} s" for k in ("model_load_s", "weights_s", "init_engine_s") if k in b]
        within = [f"{w} {b[k]:.1f} s" for k, w in (("compile_s", "torch.compile"), ("graph_capture_s", "CUDA graphs"))
                  if k in b]  # both happen inside vLLM's init engine step
        if within and parts and "init_engine_s" in b:
            parts[-1] += f" (of which {', '.join(within)})"
        if "logprobs_warm_up_s" in b:  # the harness's own: a scoring request before the engine counts as started
            parts.append(f"prompt-logprobs warm-up {b['logprobs_warm_up_s']:.1f} s")
        parts += [f"other_s {b['other_s']:.1f} s"] if "other_s" in b else []
        if "flashinfer_autotune" in b:
            parts.append(f"FlashInfer autotune {'on' if b['flashinfer_autotune'] else 'off'}")
        line = f"- {label} engine start: {e['engine_start_s']:.1f} s" + (f" ({', '.join(parts)})" if parts else "")
        kw = e.get("engine_kwargs") or {}
        tp, pp = kw.get("tensor_parallel_size", 1), kw.get("pipeline_parallel_size", 1)
        if tp > 1 or pp > 1:
            line += f"; tensor x pipeline parallel {tp} x {pp}" + (f" ({kw['distributed_executor_backend']})"
                                                                  if kw.get("distributed_executor_backend") else "")
        dp = e.get("data_parallel")
        if dp:
            line += (f"; data parallel: {dp['size']} engines (GPUs {' | '.join(dp['devices'])}), each scoring a share "
                     "of the documents")
        off = e.get("offload")
        if off:
            line += (f"; CPU offload: {off.get('offloaded_gib')} GiB of weights in CPU memory ({off.get('offloader')}, "
                     f"{off.get('requested')}): changes speed, not numbers")
        out.append(line)
    return out


def kernel_notes(kernel: str) -> list[str]:
    if "W4A16" in kernel:
        return ["- **note:** Marlin W4A16 leaves activations in 16 bit: this measures weight-only fidelity. For the "
                "W4A4 scheme on Hopper set `fidelity: scheme` (the default; or `require_kernel: W4A4` to refuse this "
                "run)."]
    if "emulation" in kernel:
        return ["- note: W4A4 emulation: the NVFP4 numerics of Blackwell's native kernels, computed in higher precision "
                "on this GPU; accuracy is comparable, speed is not."]
    return []


def baseline_lines(rep: dict) -> list[str]:
    out = []
    for name, o in (rep.get("baselines") or {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in (o.get("versions") or {}).items() if v)
        where = " ".join(x for x in (o.get("backend"), o.get("mode")) if x)
        out.append(f"- baseline {name}: `{o['path']}`, scored {o.get('date') or '?'} with {where or '?'} on "
                   f"{o.get('device') or '?'}" + (f" ({versions})" if versions else "") +
                   (f", commit {o['git_commit']}" if o.get("git_commit") else ""))
    return out


