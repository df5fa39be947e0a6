"""The gate report's Markdown: tables (datasets, overall, distributions, token detail, baseline updates, time) and
the page, rendered from report.json alone, so `harness report run.json` re-renders old runs."""
from __future__ import annotations

import math


def md_table(headers: list[str], rows: list[list], align: str) -> str:
    """A Markdown table with padded columns (readable in a terminal too); ``align``: one of l / r per column."""
    from tabulate import tabulate

    return tabulate([[("" if c is None else str(c)) for c in r] for r in rows], headers=headers, tablefmt="github",
                    disable_numparse=True, colalign=tuple({"l": "left", "r": "right"}[a] for a in align))


def lm_eval_table(rep: dict) -> str:
    rows = [[d["dataset"], prec.upper(), _fmt(d[prec].get("word_perplexity")), _fmt(d[prec].get("byte_perplexity")),
             _fmt(d[prec].get("bits_per_byte"))] for d in rep["datasets"] for prec in ("bf16", "nvfp4")]
    return md_table(["dataset", "precision", "word_perplexity", "byte_perplexity", "bits_per_byte"], rows, "llrrr")


def qlabel(rep: dict) -> str:
    """The quantized side's name in tables and headings: the checkpoint's scheme (NVFP4, NVFP4A16, W2A16, ...)."""
    return rep.get("scheme") or "NVFP4"


def _fmt(v, nd=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if math.isfinite(v) else str(v)
    return str(v)


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
            rows.append([d["dataset"], label, _fmt(r["ppl"], 6), _fmt(r["nll"], 6), r["tokens"], r["kept_texts"],
                         _fmt(r.get("eval_s"), 2)])
    return md_table(["dataset", "precision", "PPL", "NLL", "tokens", "kept_texts", "eval_s"], rows, "llrrrrr")


def overall_table(rep: dict) -> str:
    o = rep["overall"]
    ci = o.get("interval")
    ci_s = f"{ci['low']:.2f} .. {ci['high']:.2f}" if ci else "- (no per-document NLLs)"
    whole = md_table(["precision", "PPL", "NLL", "tokens", "relative score", ci_label(rep), "min"], [
        ["BF16", _fmt(o["bf16"]["ppl"], 6), _fmt(o["bf16"]["nll"], 6), o["bf16"]["tokens"], "100.00", "", ""],
        [qlabel(rep), _fmt(o["nvfp4"]["ppl"], 6), _fmt(o["nvfp4"]["nll"], 6), o["nvfp4"]["tokens"], f"{o['score']:.2f}",
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
    return _fmt(row.get("threshold"), 2) + (f" ({src})" if src else "")


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
        from harness.stages.timings import table

        parts += ["", "## Time", "", TIME_NOTE, "", table(rep["time"])]
    return "\n".join(parts) + "\n"


TASK_NOTE = ("Accuracy in percent; recovery = quantized / BF16 of the gated metric, with its paired bootstrap "
             "interval over items; lost = right under BF16 and wrong quantized, gained = the reverse; McNemar's exact "
             "p tests lost against gained; MDD = the smallest accuracy drop this n detects at one-sided alpha 0.05 "
             "and power 0.8 (the discordance seen here). Other metrics of each task are in report.json.")


def paired_cells(p: dict) -> dict:
    """One task's paired statistics (tasks/paired.py's ``Paired.to_dict``) as the task tables print them."""
    return {"n": p["n"], "bf16": f"{100 * p['acc_ref']:.2f}", "quantized": f"{100 * p['acc_model']:.2f}",
            "recovery": f"{p['recovery']:.3f}", "flips": f"{p['lost']} / {p['gained']} ({p['flips_pct']:.1f}%)",
            "p": f"{p['p_value']:.3g}"}


def task_table(rep: dict) -> str:
    rows = []
    for t in rep["tasks"]:
        p, c = t["paired"], paired_cells(t["paired"])
        ci = p.get("recovery_interval")
        extra = ""
        if "perplexity" in t["bf16"]:
            extra = f" (target PPL {t['bf16']['perplexity']:.4g} -> {t['nvfp4'].get('perplexity', math.nan):.4g})"
        rows.append([t["task"] + extra, t["metric"], c["n"], c["bf16"], c["quantized"], c["recovery"],
                     f"{ci[0]:.3f} .. {ci[1]:.3f}" if ci else "-",
                     f"{t['recovery_min']:.3f}" + (" (lower)" if t["use"] == "lower" else ""), c["flips"], c["p"],
                     f"{100 * p['mdd']:.1f}", "ok" if t["passed"] else "FAIL"])
    return md_table(["task", "metric", "n", "BF16", "quantized", "recovery", ci_label(rep), "min", "lost / gained",
                     "McNemar p", "MDD (pts)", "gate"], rows, "llrrrrlrlrrl")


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


def token_detail_table(rep: dict) -> str:
    rows = []
    for d in rep["datasets"]:
        t = d.get("token_detail")
        if not t:
            continue
        if "note" in t:
            rows.append([d["dataset"], t["note"], "", "", "", ""])
            continue
        worst = ", ".join(f"{w['doc']}: {w['nll_increase_per_token']:.3f}" for w in t["worst_documents"])
        rows.append([d["dataset"], t["tokens"], f"{t['share_tokens_dropped']:.2%}", f"{t['share_tokens_gained']:.2%}",
                     f"{t['mean_delta_nats']:+.4f}", worst])
    return md_table(["dataset", "tokens", "logprob fell > 1 nat", "rose > 1 nat", "mean change (nats)",
                     "worst documents (doc: NLL increase per token)"], rows, "lrrrrl")


DISTRIBUTION_NOTE = (
    "KL: KL(BF16 || quantized) per scored token in nats, estimated on both top-k lists plus one bucket for all other "
    "tokens (a lower bound of the full-vocabulary KL; docs/distributions-and-tasks.md, 'Whole next-token "
    "distributions'). top-1: share of "
    "tokens where both models rank the same next token first. Δp: the true next token's probability, quantized minus "
    "BF16, in percentage points. Intervals: bootstrap over documents.")


def distribution_table(rep: dict) -> str:
    ci = ci_label(rep)
    rows = []
    for row in [*rep["datasets"], {"dataset": "overall", **rep["overall"]}]:
        st = row.get("distributions")
        if not st:
            continue
        k, t, dp = st["kld"], st["top1_interval"], st["dp_pct"]
        rows.append([row["dataset"], st["tokens"], f"{k['mean']:.5f}",
                     f"{k['interval']['low']:.5f} .. {k['interval']['high']:.5f}", f"{k['median']:.5f}",
                     f"{k['p99']:.4f}", f"{k['p99_9']:.4f}", f"{k['max']:.3f}", f"{st['top1_pct']:.2f}",
                     f"{t['low']:.2f} .. {t['high']:.2f}", f"{dp['mean']:+.3f}{_dp_ci(dp)}", f"{dp['rms']:.3f}",
                     f"{dp['p01']:+.2f} .. {dp['p99']:+.2f}", _limits(row.get("limits") or [])])
    return md_table(["dataset", "tokens", "KL mean", ci, "median", "p99", "p99.9", "max", "top-1 %", ci,
                     f"Δp mean ({ci})", "RMS Δp", "Δp p01 .. p99", "limits"], rows, "lrrlrrrrrllrll")


def _dp_ci(dp: dict) -> str:
    ci = dp.get("mean_interval")
    return f" ({ci['low']:+.3f} .. {ci['high']:+.3f})" if ci else ""


def _limits(rows: list[dict]) -> str:
    if not rows:
        return "-"
    from harness.stages.judge import LIMITS

    out = []
    for r in rows:
        spec = LIMITS[r["key"]]
        mdd = f", MDD {spec.fmt(r['mdd'])}" if r.get("mdd") is not None else ""
        out.append(f"{'ok' if r['passed'] else '**FAIL**'} {spec.label} {spec.relation()} {r['limit']:g} "
                   f"({r['threshold_source']}{mdd})")
    return "; ".join(out)


def most_changed(rep: dict) -> str:
    lines = ["| dataset | documents (index among the kept texts: KL mean, top-1) | positions (document:token: KL; "
             f"true token; BF16 vs {qlabel(rep)} top-1; p(true) BF16 -> {qlabel(rep)}) |", "|---|---|---|"]
    for d in rep["datasets"]:
        st = d.get("distributions")
        if not st:
            continue
        docs = "<br>".join(f"{w['doc']}: {w['kld_mean']:.4f}, {w['top1_pct']:.1f}%" for w in st["worst_documents"])
        pos = "<br>".join(f"{w['doc']}:{w['position']}: {w['kld']:.3f}; {_tok(w, 'true')}; {_tok(w, 'top1_bf16')} vs "
                          f"{_tok(w, 'top1_model')}; {w['p_true_bf16']:.3f} -> {w['p_true_model']:.3f}"
                          for w in st["worst_positions"])
        lines.append(f"| {d['dataset']} | {docs} | {pos} |")
    return "\n".join(lines)


def _tok(w: dict, key: str) -> str:
    text = w.get(f"{key}_text")
    tid = w["true_id" if key == "true" else key]
    return f"`{text!r}`" if text is not None else str(tid)


def baseline_diff_table(updates: list[dict]) -> str:
    rows = []
    for u in updates:
        old, new = u["old"] or {}, u["new"]
        for k in ("ppl", "nll", "tokens", "kept_texts", "fingerprint", "backend", "device", "date"):
            o, n = old.get(k), new.get(k)
            rows.append([u["dataset"], k + ("" if o == n else " *"), _fmt(o, 6), _fmt(n, 6)])
    return md_table(["dataset", "field", "old", "new"], rows, "llll")


def baseline_lines(rep: dict) -> list[str]:
    out = []
    for name, o in (rep.get("baselines") or {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in (o.get("versions") or {}).items() if v)
        where = " ".join(x for x in (o.get("backend"), o.get("mode")) if x)
        out.append(f"- baseline {name}: `{o['path']}`, scored {o.get('date') or '?'} with {where or '?'} on "
                   f"{o.get('device') or '?'}" + (f" ({versions})" if versions else "") +
                   (f", commit {o['git_commit']}" if o.get("git_commit") else ""))
    return out


def ci_label(rep: dict) -> str:
    """The interval columns' header at the configured confidence (thresholds.confidence)."""
    conf = (rep.get("gate") or {}).get("confidence") or 0.95
    return f"{conf * 100:g}% CI"
