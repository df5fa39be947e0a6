"""The gate report's SVG chart: relative score per dataset and overall with intervals and thresholds, and the KL
histogram when next-token distributions were compared. Works from report.json alone."""
from __future__ import annotations

from pathlib import Path

from harness.report.cells import ci_label


def chart_layout(scores: list[float], thresholds: list[float], cis: list[dict | None]) -> tuple[float, float, list]:
    """The score axis (lo, hi) and each value label's height: the axis spans every score, interval and threshold and
    100 with a margin (8% of the span, at least 0.3 points) below, room for the labels above; a label sits a quarter
    margin above its bar's interval (or its bar), so the error bar never crosses it."""
    tops = [max(s, ci["high"] if ci else s) for s, ci in zip(scores, cis)]
    lo = min(min(scores), min(thresholds), *(c["low"] for c in cis if c))
    hi = max(100.0, *tops, *thresholds)  # a threshold above every score (min 150) is the reason a bar is red
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
