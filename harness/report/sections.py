"""The report page's optional sections (harness/report/markdown.py lays out the page): tasks, next-token distributions
and the most changed tokens, per-token detail, baseline updates."""
from __future__ import annotations

import math

from harness.limits import LIMITS
from harness.report.cells import ci_label, fmt, md_table, qlabel

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
            rows.append([u["dataset"], k + ("" if o == n else " *"), fmt(o, 6), fmt(n, 6)])
    return md_table(["dataset", "field", "old", "new"], rows, "llll")
