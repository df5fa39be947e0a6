"""`harness compare`: several recipes (or existing checkpoints) of one model, gated in one run against the same
stored BF16 baselines, side by side; and each pair of them on the same documents.

Each recipe runs the gate's own path (GateSession: the checkpoint cache, one engine alive at a time, closed before
the next). Per recipe: the score with its interval, KL mean and p99, top-1 agreement, Δp, checkpoint size, time,
kernel and the verdict. Per pair (A, B): the score difference A - B with a paired bootstrap interval (the same
resampled documents for both, stratified by dataset as the gate's own interval), and a word: ``better`` when the
whole interval is above 0, ``worse`` when below, else ``indistinguishable`` at the configured confidence."""
from __future__ import annotations

import textwrap
import time
from pathlib import Path

from harness.checkpoint import disk_size
from harness.errors import BaselineError, HarnessError
from harness.metrics import _quantiles, resampled_totals
from harness.precision import NVFP4
from harness.recipes.catalog import default_recipes
from harness.report.cells import md_table
from harness.report.chart import chart_layout
from harness.report.folder import save_svg, write_report_folder
from harness.report.sections import paired_cells


def pair_difference(ref: dict, a: dict, b: dict, samples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict:
    """Score(A) - score(B), overall. ``ref``, ``a``, ``b``: dataset -> (per-document NLL sums, per-document token
    counts) of BF16, recipe A and recipe B on the same documents."""
    import numpy as np


    groups, point = {}, np.zeros(2)
    tokens = 0
    for name in ref:
        r, x, y = (np.asarray(d[name][0], dtype=np.float64) for d in (ref, a, b))
        if not len(r) == len(x) == len(y):
            raise ValueError(f"{name}: {len(r)} BF16, {len(x)} A and {len(y)} B documents: cannot pair")
        groups[name] = (np.stack([r - x, r - y], axis=1), ref[name][1])
        point += groups[name][0].sum(0)
        tokens += int(np.sum(ref[name][1]))
    totals, tok = resampled_totals(groups, samples, seed)
    diffs = 100.0 * (np.exp(totals[:, 0] / tok) - np.exp(totals[:, 1] / tok))
    lo, hi = _quantiles(diffs, confidence)
    d = float(100.0 * (np.exp(point[0] / tokens) - np.exp(point[1] / tokens)))
    word = "better" if lo > 0 else "worse" if hi < 0 else "indistinguishable"
    return {"difference": d, "low": lo, "high": hi, "confidence": confidence, "word": word}


def bf16_documents(baselines: dict, update_hint: str) -> dict:
    """dataset -> (per-document NLL sums, token counts) of the stored BF16 baselines (dataset -> Baseline): what
    recipes are paired on (here, and in the recipe regression); a BaselineError when a baseline holds no
    per-document NLLs."""
    missing = [n for n, b in baselines.items() if not b.has_documents]
    if missing:
        raise BaselineError(f"baselines {missing} hold no per-document NLLs: recipes cannot be paired; "
                            f"re-create them: {update_hint}")
    return {n: (b.doc_nll_sums, b.doc_tokens) for n, b in baselines.items()}


def recipe_row(recipe: str, judged, checkpoint, scores, time: dict) -> dict:
    """One recipe's row of the comparison, from its judge, provide and score stages' results."""
    o = judged.overall.comparison
    path, info = checkpoint.path, checkpoint.info
    dist = judged.overall.distributions or {}
    kld = dist.get("kld") or {}
    return {"recipe": recipe, "score": o.score,
            "low": o.interval.low if o.interval else None, "high": o.interval.high if o.interval else None,
            "ppl": o.ppl_model, "threshold": judged.overall.threshold, "passed": judged.verdict.passed,
            "kld_mean": kld.get("mean"), "kld_p99": kld.get("p99"),
            "top1_pct": dist.get("top1_pct"), "dp_mean_pct": (dist.get("dp_pct") or {}).get("mean"),
            "bytes": disk_size(path), "scheme": info.get("scheme"), "cache_hit": info.get("cache_hit"),
            "kernel": scores.engine.get("kernel"), "time": time,
            "tasks": [{"task": o.name, "metric": o.metric, "passed": o.passed, **o.paired.to_dict()}
                      for o in judged.task_outcomes]}


def run(make_session, recipes: list[str], log=print) -> dict:
    """Gate each recipe (``make_session(recipe)`` -> GateSession), one engine at a time; then every pair of those that
    ran. A recipe that cannot run (a HarnessError: llm-compressor refuses it, the engine cannot start it) is a row
    with its error, and the others still run: one bad recipe does not hide the comparison of the rest."""
    rows, docs = [], {}
    ref = None
    t = None
    for r in recipes:
        s = None
        try:
            s = make_session(r)  # its preflight too: a recipe the backend refuses is that recipe's row
            for n in s.dataset_names:
                s.score(n)
            for n in s.task_names:  # the same engine
                s.task_score(n)
            s.engines.close()
            judged = s.judged()
            verdict = judged.verdict
            row = recipe_row(s.recipe_name, judged, s.checkpoint(), s.scores(NVFP4), s.time_breakdown())
            if judged.recipe_record:
                row["record"] = str(judged.recipe_record)
            if ref is None:
                ref = bf16_documents(judged.baselines, s.update_hint)
                t = s.cfg.thresholds
            rows.append(row)
            docs[r] = s.scores(NVFP4).documents
            log(f"{r}: score {row['score']:.2f} [{row['low']:.2f}, {row['high']:.2f}] "
                f"{'PASSED' if verdict.passed else 'FAILED'}")
        except BaselineError:
            raise  # the baselines are every recipe's: nothing to compare against
        except HarnessError as e:
            first = str(e).splitlines()[0]
            rows.append({"recipe": r, "error": first})
            log(f"{r}: could not be gated: {first}")
        finally:
            if s is not None:
                s.close()
    ran = [r for r in recipes if r in docs]
    pairs = []
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            d = pair_difference(ref, docs[a], docs[b], t.bootstrap_samples, t.confidence, t.seed)
            pairs.append({"a": a, "b": b, **d})
    return {"recipes": rows, "pairs": pairs}


def tables(rep: dict) -> tuple[str, str]:
    def f(v, nd=2):
        return "n/a" if v is None else f"{v:.{nd}f}"

    rows = [[r["recipe"], f"{f(r['score'])} [{f(r['low'])}, {f(r['high'])}]", f(r["ppl"], 3), f(r["kld_mean"], 4),
             f(r["kld_p99"], 3), f(r["top1_pct"], 1), f"{r['bytes'] / 2**20:.1f}", r["kernel"] or "?",
             f"{r['time']['wall_s']:.0f}", "PASS" if r["passed"] else "FAIL"] if "error" not in r else
            [r["recipe"], "", "", "", "", "", "", "", "", f"ERROR: {r['error']}"] for r in rep["recipes"]]
    one = md_table(["recipe", "score [CI]", "PPL", "KL mean", "KL p99", "top-1 %", "MiB", "kernel", "s", "gate"],
                   rows, "l" * 10)
    pairs = [[p["a"], p["b"], f"{p['difference']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]", p["word"]]
             for p in rep["pairs"]]
    two = md_table(["A", "B", "score A - B [CI]", "A is"], pairs, "llll")
    return one, two


def task_table(rep: dict) -> str:
    """Per recipe and task: accuracy against BF16, recovery, flips both ways and McNemar's p ("" without tasks)."""
    rows = [[r["recipe"], t["task"], t["metric"], *paired_cells(t).values(), "PASS" if t["passed"] else "FAIL"]
            for r in rep["recipes"] if "error" not in r for t in r.get("tasks", [])]
    if not rows:
        return ""
    return md_table(["recipe", "task", "metric", "n", "BF16", "quantized", "recovery", "lost / gained", "McNemar p",
                     "gate"], rows, "lllrrrrlrl")


def render_markdown(rep: dict) -> str:
    one, two = tables(rep)
    tasks = task_table(rep)
    conf = rep["pairs"][0]["confidence"] if rep["pairs"] else None
    return "\n".join([f"# Recipes compared: {rep['model']}", "", f"- config: `{rep['config']}`; backend "
                      f"{rep['backend']}; created {rep['created']}", "", one, "", "![scores](chart.svg)", "",
                      "## Pairwise, on the same documents" + (f" ({conf:.0%} paired bootstrap)" if conf else ""), "",
                      two, ""] + (["## Tasks (the same items under BF16 and each recipe)", "", tasks, ""]
                                   if tasks else []))


def deltas_to_reference(rep: dict) -> tuple[str | None, list[dict]]:
    """Each recipe that ran against the first one that ran (the reference): score(X) - score(ref) with its paired
    bootstrap interval, read from the pairs (which hold A - B for A listed before B)."""
    ran = [r["recipe"] for r in rep["recipes"] if "error" not in r]
    if len(ran) < 2:
        return (ran[0] if ran else None), []
    ref = ran[0]
    by_pair = {(p["a"], p["b"]): p for p in rep["pairs"]}
    out = []
    for x in ran[1:]:
        p = by_pair[(ref, x)]
        out.append({"recipe": x, "delta": -p["difference"], "low": -p["high"], "high": -p["low"]})
    return ref, out


def write_chart(rep: dict, path: Path) -> None:
    """Scores zoomed to the data (every score, interval and threshold inside the axis: harness/report/chart.py's
    layout), each with its value; a recipe that could not be gated is a labelled gap; below, each recipe's paired
    difference to the reference (the first that ran) with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    rows = rep["recipes"]
    ran = [r for r in rows if "error" not in r]
    ref, deltas = deltas_to_reference(rep)
    width = max(6.0, 1.4 * len(rows) + 2)
    if deltas:
        fig, (ax, dax) = plt.subplots(2, 1, figsize=(width, 6.2), gridspec_kw={"height_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(width, 3.8))
    cis = [{"low": r["low"], "high": r["high"]} if r["low"] is not None else None for r in ran]
    if ran:
        lo, hi, label_y = chart_layout([r["score"] for r in ran], [r["threshold"] for r in ran], cis)
    else:
        lo, hi, label_y = 0.0, 100.0, []
    labels = iter(label_y)
    for x, r in enumerate(rows):
        if "error" in r:  # the gap says why; the table holds the whole cause
            ax.text(x, (lo + hi) / 2, "not gated:\n" + "\n".join(textwrap.wrap(r["error"], 22)[:5]), ha="center",
                    va="center", fontsize=6.5, color="#c44e52")
            continue
        ax.bar(x, r["score"] - lo, bottom=lo, width=0.6, color="#55a868" if r["passed"] else "#c44e52")
        if r["low"] is not None:
            ax.errorbar(x, r["score"], yerr=[[r["score"] - r["low"]], [r["high"] - r["score"]]], fmt="none",
                        ecolor="black", capsize=4)
        ax.hlines(r["threshold"], x - 0.4, x + 0.4, colors="black", linestyles="dashed", linewidth=1)
        ax.text(x, next(labels), f"{r['score']:.2f}", ha="center", va="bottom", fontsize=9)
    ax.axhline(100, color="grey", linewidth=0.8)
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xticks(range(len(rows)), [r["recipe"] for r in rows], fontsize=8)
    ax.set_ylabel("score (BF16 = 100)")
    ax.set_title(f"{rep['model']}: score per recipe (dashed: threshold; grey: BF16 = 100)", fontsize=9)
    if deltas:
        _delta_panel(dax, deltas, ref)
    save_svg(fig, path)


def _delta_panel(dax, deltas: list[dict], ref: str) -> None:
    """Each recipe's paired difference to the reference, with its interval and its value."""
    xs = range(len(deltas))
    d = [x["delta"] for x in deltas]
    dax.errorbar(xs, d, yerr=[[x["delta"] - x["low"] for x in deltas], [x["high"] - x["delta"] for x in deltas]],
                 fmt="o", color="black", capsize=4)
    for i, x in enumerate(deltas):
        dax.text(i + 0.08, x["delta"], f"{x['delta']:+.2f} [{x['low']:+.2f}, {x['high']:+.2f}]", fontsize=8,
                 va="center")
    dax.axhline(0, color="grey", linewidth=0.8)
    span = max(max(abs(x["low"]), abs(x["high"])) for x in deltas) * 1.3 or 1.0
    dax.set_ylim(-span, span)
    dax.set_xlim(-0.5, len(deltas) - 0.2)
    dax.set_xticks(list(xs), [x["recipe"] for x in deltas], fontsize=8)
    dax.set_ylabel(f"score - {ref}")
    dax.set_title(f"difference to {ref}, paired on the same documents", fontsize=9)


def write(rep: dict, reports_dir: Path) -> Path:
    return write_report_folder(reports_dir, rep["model"], "compare", rep, "compare", render_markdown, write_chart)


def main(a, session) -> int:
    """`harness compare` (harness/cli/main.py): ``session(recipe)`` makes the GateSession of the command's config."""
    cfg = session(None).cfg
    recipes = a.recipes or (cfg.recipes if cfg.recipes is not None else
                            default_recipes(cfg.path_of("recipes_dir"), cfg.name))
    if len(recipes) < 2:
        raise HarnessError(f"compare needs two recipes or more, got {recipes}: name them with --recipes A B ...")
    report_dir = Path(a.report_dir) if a.report_dir else cfg.path_of("reports_dir")

    def make(recipe):
        s = session(recipe)
        s.preflight(report_dir)  # every recipe's faults before its quantization or engine start
        return s

    rep = run(make, recipes)
    rep = {"model": cfg.name, "config": cfg.source_path, "backend": getattr(a, "backend", None) or cfg.backend,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **rep}
    one, two = tables(rep)
    print(f"\n{one}\n\n{two}\n")
    tasks = task_table(rep)
    if tasks:
        print(f"Tasks (the same items under BF16 and each recipe):\n{tasks}\n")
    out = write(rep, report_dir)
    print(f"report: {out}/compare.md")
    failed = [r["recipe"] for r in rep["recipes"] if "error" in r]
    if failed:
        raise HarnessError(f"recipes that could not be gated: {', '.join(failed)} (their errors are in the table "
                           "above and in the report); the others are compared")
    return 0
