"""Reports: timestamped JSON (the source of truth), a Markdown report, an SVG bar chart, and the run's log.

A report folder is written under a temp name and renamed into place at the end, so an interrupted run leaves no
half report. ``render_markdown`` works from the JSON alone, so ``harness report run.json`` re-renders old runs.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from harness.metrics import lm_eval_metrics

REPORT_SCHEMA = 1


def build_report(session, verdict) -> dict:
    """Collect everything a reader needs from a finished GateSession."""
    from harness.checkpoint import disk_size

    cfg = session.cfg
    ckpt, ckpt_info = session.checkpoint()
    q_info = session.engine_info("nvfp4")
    datasets = []
    for name in session.dataset_names:
        b = session.baseline(name)
        s = session.score(name)
        prep = session.prepared(name)
        c = session.comparison(name)
        datasets.append({
            "dataset": name,
            "bf16": {"ppl": b.ppl, "nll": b.nll, "tokens": b.tokens, "kept_texts": b.kept_texts,
                     "eval_s": b.provenance.get("eval_s"), "backend": b.provenance.get("backend"),
                     "device": b.provenance.get("device"), "date": b.provenance.get("date"),
                     **lm_eval_metrics(b.nll * b.tokens, b.words, b.bytes)},
            "nvfp4": {"ppl": s.ppl, "nll": s.nll, "tokens": s.tokens, "kept_texts": prep.stats.kept_texts,
                      "eval_s": round(s.eval_s or 0, 3), "tokens_per_s": s.tokens_per_s, **s.lm_eval_metrics()},
            "score": c.score, "interval": _interval(c), "threshold": session.threshold(name),
            "threshold_source": session.threshold_source(name)[1],
            "data": prep.summary(), "token_detail": session.token_summary(name),
            "distributions": with_token_text(session.distribution_stats(name), session.tokenizer),
            "limits": [limit_row(o) for o in session.limit_outcomes(name)],
        })
    o = session.overall()
    overall = overall_block(datasets, interval=_interval(o), threshold=session.threshold(None))
    overall["threshold_source"] = session.threshold_source(None)[1]
    overall["distributions"] = session.distribution_stats(None)
    overall["limits"] = [limit_row(o) for o in session.limit_outcomes(None)]
    bf16_path = Path(cfg.resolve(cfg.model.path))
    from harness.checkpoint import view_source

    view_of = view_source(bf16_path) if bf16_path.is_dir() else None
    b0 = session.baseline(session.dataset_names[0])
    return {
        "schema_version": REPORT_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.source_path, "model": cfg.name, "model_path": cfg.model.path, "recipe": session.recipe_name,
        "scheme": ckpt_info.get("scheme"), "backend": session.backend,
        "kernel": q_info.get("kernel"), "engine": q_info,
        "max_model_len": cfg.model.max_model_len,
        "top_k": session.top_k or None,
        "datasets": datasets,
        "overall": overall,
        "gate": {"passed": verdict.passed, "use": cfg.thresholds.use, "confidence": cfg.thresholds.confidence,
                 "summary": verdict.summary()},
        "baselines": {n: baseline_origin(session, n) for n in session.dataset_names},
        "bf16_engine": {k: b0.provenance.get(k) for k in ("engine_kwargs", "engine_start_s", "engine_start", "offload")},
        "checkpoints": {"bf16": {"path": str(bf16_path),
                                 "bytes": disk_size(bf16_path) if bf16_path.is_dir() and not view_of else None,
                                 **({"view_of": str(view_of)} if view_of else {})},
                        "nvfp4": {"path": str(ckpt), "bytes": disk_size(ckpt), **ckpt_info}},
        "baseline_updates": update_rows(session.baseline_updates),
        "recipe_regression": session.recipe_regression(),  # None unless the config asks (harness/recipe_records.py)
        "recipe_record": str(session.recipe_record() or "") or None,
        "wall_s": round(time.time() - session.started, 1),
        "time": session.time_breakdown(),  # brought up to date when the report is written (write_report)
    }


def limit_row(o) -> dict:
    return {"key": o.key, "value": o.value, "point": o.point, "limit": o.limit, "passed": o.passed,
            "threshold_source": o.threshold_source}


def with_token_text(stats: dict | None, tokenizer) -> dict | None:
    """The worst positions with their tokens as text (the true token, and each model's most likely one)."""
    if not stats or not stats.get("worst_positions"):
        return stats
    tok = tokenizer()
    for w in stats["worst_positions"]:
        for key in ("true", "top1_bf16", "top1_model"):
            tid = w["true_id" if key == "true" else key]
            w[f"{key}_text"] = tok.decode([tid])
    return stats


def lm_eval_table(rep: dict) -> str:
    lines = ["| dataset | precision | word_perplexity | byte_perplexity | bits_per_byte |", "|---|---|---:|---:|---:|"]
    for d in rep["datasets"]:
        for prec in ("bf16", "nvfp4"):
            r = d[prec]
            lines.append(f"| {d['dataset']} | {prec.upper()} | {_fmt(r.get('word_perplexity'))} | "
                         f"{_fmt(r.get('byte_perplexity'))} | {_fmt(r.get('bits_per_byte'))} |")
    return "\n".join(lines)


def overall_block(datasets: list[dict], interval: dict | None = None, threshold: float | None = None) -> dict:
    """The overall row: per-dataset NLLs pooled by token count, and the relative score."""
    from harness.metrics import compare, overall_nll

    ref = overall_nll({d["dataset"]: (d["bf16"]["nll"], d["bf16"]["tokens"]) for d in datasets})
    mod = overall_nll({d["dataset"]: (d["nvfp4"]["nll"], d["nvfp4"]["tokens"]) for d in datasets})
    c = compare("overall", ref, mod)
    return {"bf16": {"ppl": c.ppl_ref, "nll": c.nll_ref, "tokens": ref[1]},
            "nvfp4": {"ppl": c.ppl_model, "nll": c.nll_model, "tokens": mod[1]},
            "score": c.score, "interval": interval, "threshold": threshold}


def reference_report(model_dir: Path) -> dict:
    """Tables from stored files alone: ``<model_dir>/<dataset>.json`` (BF16 baselines) against
    ``<model_dir>/reference/nvfp4-<dataset>.json`` (a stored NVFP4 result), e.g. the reference study's."""
    from harness.baselines import Baseline
    from harness.errors import HarnessError
    from harness.metrics import relative_score

    model_dir = Path(model_dir)
    datasets = []
    for f in sorted(model_dir.glob("*.json")):
        ref_file = model_dir / "reference" / f"nvfp4-{f.stem}.json"
        if not ref_file.exists():
            continue
        b = Baseline.from_dict(json.loads(f.read_text()), str(f))
        q = Baseline.from_dict(json.loads(ref_file.read_text()), str(ref_file))
        row = {"dataset": f.stem, "score": relative_score(b.ppl, q.ppl), "interval": None, "threshold": None}
        for prec, x in (("bf16", b), ("nvfp4", q)):
            row[prec] = {"ppl": x.ppl, "nll": x.nll, "tokens": x.tokens, "kept_texts": x.kept_texts,
                         "eval_s": x.provenance.get("eval_s")}
        datasets.append(row)
    if not datasets:
        raise HarnessError(f"{model_dir}: no <dataset>.json with a matching reference/nvfp4-<dataset>.json")
    return {"datasets": datasets, "overall": overall_block(datasets), "kernel": q.provenance.get("kernel"),
            "model": b.model}


def _interval(c) -> dict | None:
    i = c.interval
    return None if i is None else {"low": i.low, "high": i.high, "confidence": i.confidence, "samples": i.samples}


def update_rows(pairs) -> list[dict]:
    """(old, new) baseline pairs as the rows baseline_diff_table prints."""
    return [{"dataset": new.dataset, "old": _brief(old), "new": _brief(new)} for old, new in pairs]


def _brief(b) -> dict | None:
    if b is None:
        return None
    return {"ppl": b.ppl, "nll": b.nll, "tokens": b.tokens, "kept_texts": b.kept_texts, "fingerprint": b.fingerprint,
            "backend": b.provenance.get("backend"), "device": b.provenance.get("device"), "date": b.provenance.get("date")}


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
    lines = ["| dataset | precision | PPL | NLL | tokens | kept_texts | eval_s |", "|---|---|---:|---:|---:|---:|---:|"]
    for d in rep["datasets"]:
        for prec in ("bf16", "nvfp4"):
            r = d[prec]
            label = "BF16" if prec == "bf16" else f"{qlabel(rep)} ({rep.get('kernel') or '?'})"
            lines.append(f"| {d['dataset']} | {label} | {_fmt(r['ppl'], 6)} | {_fmt(r['nll'], 6)} | {r['tokens']} | "
                         f"{r['kept_texts']} | {_fmt(r.get('eval_s'), 2)} |")
    return "\n".join(lines)


def overall_table(rep: dict) -> str:
    o = rep["overall"]
    ci = o.get("interval")
    ci_s = f"{ci['low']:.2f} .. {ci['high']:.2f}" if ci else "- (no per-document NLLs)"
    lines = [f"| precision | PPL | NLL | tokens | relative score | {ci_label(rep)} | min |", "|---|---:|---:|---:|---:|---|---:|",
             f"| BF16 | {_fmt(o['bf16']['ppl'], 6)} | {_fmt(o['bf16']['nll'], 6)} | {o['bf16']['tokens']} | 100.00 | | |",
             f"| {qlabel(rep)} | {_fmt(o['nvfp4']['ppl'], 6)} | {_fmt(o['nvfp4']['nll'], 6)} | {o['nvfp4']['tokens']} | "
             f"{o['score']:.2f} | {ci_s} | {_min(o)} |"]
    per = ["", f"| dataset | relative score | {ci_label(rep)} | min |", "|---|---:|---|---:|"]
    for d in rep["datasets"]:
        ci = d.get("interval")
        ci_s = f"{ci['low']:.2f} .. {ci['high']:.2f}" if ci else "-"
        per.append(f"| {d['dataset']} | {d['score']:.2f} | {ci_s} | {_min(d)} |")
    return "\n".join(lines + per)


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
    if rep.get("top_k"):
        parts += ["", f"## Next-token distributions against BF16 (top-{rep['top_k']})", "",
                  distribution_table(rep), "", DISTRIBUTION_NOTE, "", "### Most changed", "", most_changed(rep)]
    if any(d.get("token_detail") for d in rep["datasets"]):
        parts += ["", "## Per-token detail", "", token_detail_table(rep)]
    if rep.get("baseline_updates"):
        parts += ["", "## Baseline updates", "", baseline_diff_table(rep["baseline_updates"])]
    if rep.get("time"):
        from harness.timings import table

        parts += ["", "## Time", "", TIME_NOTE, "", table(rep["time"])]
    return "\n".join(parts) + "\n"


TIME_NOTE = ("Where this run's time went, stage by stage (exclusive: starting an engine inside scoring counts as "
             "engine start). quantize is the cache lookup when the checkpoint was cached; other is what no stage "
             "claims: imports, baselines, closing engines.")


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
        parts = [f"{k} {b[k]:.1f} s" for k in ("model_load_s", "weights_s", "init_engine_s", "other_s") if k in b]
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
    lines = ["| dataset | tokens | logprob fell > 1 nat | rose > 1 nat | mean change (nats) | worst documents "
             "(doc: NLL increase per token) |", "|---|---:|---:|---:|---:|---|"]
    for d in rep["datasets"]:
        t = d.get("token_detail")
        if not t:
            continue
        if "note" in t:
            lines.append(f"| {d['dataset']} | {t['note']} | | | | |")
            continue
        worst = ", ".join(f"{w['doc']}: {w['nll_increase_per_token']:.3f}" for w in t["worst_documents"])
        lines.append(f"| {d['dataset']} | {t['tokens']} | {t['share_tokens_dropped']:.2%} | "
                     f"{t['share_tokens_gained']:.2%} | {t['mean_delta_nats']:+.4f} | {worst} |")
    return "\n".join(lines)


DISTRIBUTION_NOTE = (
    "KL: KL(BF16 || quantized) per scored token in nats, estimated on both top-k lists plus one bucket for all other "
    "tokens (a lower bound of the full-vocabulary KL; README, 'Beyond perplexity'). top-1: share of "
    "tokens where both models rank the same next token first. Δp: the true next token's probability, quantized minus "
    "BF16, in percentage points. Intervals: bootstrap over documents.")


def distribution_table(rep: dict) -> str:
    ci = ci_label(rep)
    lines = [f"| dataset | tokens | KL mean | {ci} | median | p99 | p99.9 | max | top-1 % | {ci} | Δp mean ({ci}) | "
             "RMS Δp | Δp p01 .. p99 | limits |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|---|---|"]
    for row in [*rep["datasets"], {"dataset": "overall", **rep["overall"]}]:
        st = row.get("distributions")
        if not st:
            continue
        k, t, dp = st["kld"], st["top1_interval"], st["dp_pct"]
        lines.append(f"| {row['dataset']} | {st['tokens']} | {k['mean']:.5f} | {k['interval']['low']:.5f} .. "
                     f"{k['interval']['high']:.5f} | {k['median']:.5f} | {k['p99']:.4f} | {k['p99_9']:.4f} | "
                     f"{k['max']:.3f} | {st['top1_pct']:.2f} | {t['low']:.2f} .. {t['high']:.2f} | "
                     f"{dp['mean']:+.3f}{_dp_ci(dp)} | {dp['rms']:.3f} | {dp['p01']:+.2f} .. {dp['p99']:+.2f} | "
                     f"{_limits(row.get('limits') or [])} |")
    return "\n".join(lines)


def _dp_ci(dp: dict) -> str:
    ci = dp.get("mean_interval")
    return f" ({ci['low']:+.3f} .. {ci['high']:+.3f})" if ci else ""


def _limits(rows: list[dict]) -> str:
    if not rows:
        return "-"
    from harness.judge import LIMITS

    out = []
    for r in rows:
        spec = LIMITS[r["key"]]
        out.append(f"{'ok' if r['passed'] else '**FAIL**'} {spec.label} {spec.relation()} {r['limit']:g} "
                   f"({r['threshold_source']})")
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
    lines = ["| dataset | field | old | new |", "|---|---|---|---|"]
    for u in updates:
        old, new = u["old"] or {}, u["new"]
        for k in ("ppl", "nll", "tokens", "kept_texts", "fingerprint", "backend", "device", "date"):
            o, n = old.get(k), new.get(k)
            mark = "" if o == n else " *"
            lines.append(f"| {u['dataset']} | {k}{mark} | {_fmt(o, 6)} | {_fmt(n, 6)} |")
    return "\n".join(lines)


def baseline_origin(session, name: str) -> dict:
    """Which BF16 baseline a dataset was compared against: its file, when and where it was scored."""
    b = session.baseline(name)
    p = b.provenance
    return {"path": str(session.store.path(session.cfg.name, name)), "date": p.get("date"), "backend": p.get("backend"),
            "device": p.get("device"), "versions": p.get("versions"), "git_commit": p.get("git_commit"),
            "mode": (p.get("compilation") or {}).get("mode")}


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


def chart_layout(scores: list[float], thresholds: list[float], cis: list[dict | None]) -> tuple[float, float, list]:
    """The score axis (lo, hi) and each value label's height: the axis spans every score, interval and threshold and
    100 with a margin (8% of the span, at least 0.3 points) below, room for the labels above; a label sits a quarter
    margin above its bar's interval (or its bar), so the error bar never crosses it."""
    tops = [max(s, ci["high"] if ci else s) for s, ci in zip(scores, cis)]
    lo = min(min(scores), min(thresholds), *(c["low"] for c in cis if c))
    hi = max(100.0, *tops)
    pad = max((hi - lo) * 0.08, 0.3)
    return lo - pad, hi + 1.6 * pad, [t + 0.25 * pad for t in tops]


def write_chart(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d["dataset"] for d in rep["datasets"]] + ["overall"]
    scores = [d["score"] for d in rep["datasets"]] + [rep["overall"]["score"]]
    cis = [d.get("interval") for d in rep["datasets"]] + [rep["overall"].get("interval")]
    thr = [d["threshold"] for d in rep["datasets"]] + [rep["overall"]["threshold"]]
    hist = [(d["dataset"], d["distributions"]["histogram"]) for d in rep["datasets"] if d.get("distributions")]
    if hist:
        fig, (ax, hax) = plt.subplots(2, 1, figsize=(6.4, 7.4))
        kl_histogram(hax, hist, rep.get("top_k"))
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = ["#4c9a2a" if s >= t else "#c0392b" for s, t in zip(scores, thr)]
    lo, hi, label_y = chart_layout(scores, thr, cis)
    # bars grow from the bottom of the axis, so a score far below its threshold is a short bar, never an invisible one
    ax.bar(names, [s - lo for s in scores], bottom=lo, color=colors)
    ax.plot(range(len(scores)), scores, linestyle="none", marker="_", markersize=18, color="black")
    ci_name = ci_label(rep)
    for i, ci in enumerate(cis):
        if ci:
            ax.errorbar(i, scores[i], yerr=[[scores[i] - ci["low"]], [ci["high"] - scores[i]]], color="black", capsize=4,
                        label=ci_name if i == next(j for j, c in enumerate(cis) if c) else None)
        ax.hlines(thr[i], i - 0.4, i + 0.4, colors="black", linestyles="dashed",
                  label="threshold (min score)" if i == 0 else None)
        # the value sits above the bar and its interval, never on the error bar
        ax.text(i, label_y[i], f"{scores[i]:.2f}", ha="center", va="bottom", fontsize=9)
    ax.axhline(100, color="grey", linewidth=0.8, label="BF16 = 100")
    ax.set_ylim(lo, hi)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax.set_ylabel("relative score (BF16 = 100)")
    ax.set_title(f"{rep['model']} / {rep['recipe']} ({rep.get('kernel') or rep['backend']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def kl_histogram(ax, hist: list[tuple[str, dict]], top_k) -> None:
    """Share of scored tokens per KL bin (log-spaced), one bar group per dataset."""
    edges = hist[0][1]["edges"]
    labels = [f"<{edges[1]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[1:-1], edges[2:])] + [f">={edges[-1]:g}"]
    width = 0.8 / len(hist)
    for j, (name, h) in enumerate(hist):
        total = max(sum(h["counts"]), 1)
        xs = [i + (j - (len(hist) - 1) / 2) * width for i in range(len(h["counts"]))]
        ax.bar(xs, [100.0 * c / total for c in h["counts"]], width=width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, fontsize=8)
    ax.set_ylabel("% of scored tokens")
    ax.set_xlabel(f"per-token KL(BF16 || quantized), nats (top-{top_k} estimate)")
    ax.legend(fontsize=8)


def write_report(rep: dict, reports_dir: Path, log_lines: list[str],
                 token_logprobs: dict[str, list[list[float]]] | None = None, time_breakdown=None) -> Path:
    """Write JSON + Markdown + SVG + logs (the run's, and the vLLM engine's as engine.log) into
    reports_dir/<timestamp>-<model>/, atomically (temp dir, rename). ``time_breakdown()``, when given, restates the
    report's "time" once the chart is drawn, so the report stage counts its own work."""
    from harness.atomic import atomic_dir

    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = atomic_dir(Path(reports_dir) / f"{stamp}-{rep['model']}-{rep['recipe']}", prefix=".report-",
                        on_exists="unique")  # two gates finishing in the same second: -2, -3, ...
    with folder as tmp:
        engine_log = (rep.get("engine") or {}).get("engine_log")
        if engine_log and Path(engine_log).is_file():  # the vLLM engine's own log travels with the report
            shutil.copy2(engine_log, tmp / "engine.log")
            rep = {**rep, "engine": {**rep["engine"], "engine_log": "engine.log"}}
        try:
            write_chart(rep, tmp / "chart.svg")
        except Exception as e:  # noqa: BLE001 - a chart is not worth the report: it is written without one
            rep = {**rep, "chart_error": f"{type(e).__name__}: {str(e)[:200]}"}
        if time_breakdown is not None:
            rep = {**rep, "time": time_breakdown()}
        (tmp / "report.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
        (tmp / "report.md").write_text(render_markdown(rep))
        (tmp / "gate.log").write_text("\n".join(log_lines) + "\n")
        for name, per_doc in (token_logprobs or {}).items():
            from harness.token_detail import save_tokens

            save_tokens(tmp / f"tokens-{name}.npz", per_doc)
    return folder.final


def session_token_logprobs(session) -> dict[str, list[list[float]]]:
    return {n: session.score(n).token_logprobs for n in session.dataset_names
            if session.score(n).token_logprobs is not None}
