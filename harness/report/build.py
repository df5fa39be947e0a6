"""Reports: timestamped JSON (the source of truth), a Markdown report, an SVG bar chart, and the run's log.

A report folder is written under a temp name and renamed into place at the end, so an interrupted run leaves no
half report. ``render_markdown`` works from the JSON alone, so ``harness report run.json`` re-renders old runs.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from harness.atomic import atomic_dir
from harness.baselines import Baseline
from harness.checkpoint import disk_size, view_source
from harness.errors import HarnessError
from harness.metrics import compare, lm_eval_metrics, overall_nll, relative_score
from harness.report.chart import write_chart
from harness.report.markdown import render_markdown
from harness.tasks.paired import mdd_from_interval
from harness.token_detail import save_tokens

REPORT_SCHEMA = 1


def build_report(run, prepared, checkpoint, scores, judged, *, tokenizer, baseline_updates=(), started: float,
                 time_breakdown: dict) -> dict:
    """Everything a reader needs, from the stage results: ``prepared``, ``checkpoint``, ``scores`` and ``judged``
    (harness/stages/results.py, judge.py), with ``run`` the run's context (harness/session/context.py: config,
    recipe, backend, model source, baseline store); ``tokenizer()`` decodes the worst positions' tokens."""
    cfg, ck, q_info = run.cfg, checkpoint, dict(scores.engine)
    datasets = [dataset_row(run, n, prepared[n], scores[n], judged, tokenizer) for n in prepared.names]
    o = judged.overall
    overall = overall_block(datasets, interval=_interval(o.comparison), threshold=o.threshold)
    overall["threshold_source"] = o.threshold_source
    overall["distributions"] = o.distributions
    overall["limits"] = [limit_row(x, cfg.thresholds.confidence) for x in o.limits]
    b0 = judged.baselines[prepared.names[0]]
    return {
        "schema_version": REPORT_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.source_path, "model": cfg.name, "model_path": cfg.model.path, "recipe": run.recipe_name,
        "scheme": ck.info.get("scheme"), "backend": run.backend,
        "kernel": q_info.get("kernel"), "engine": q_info,
        "max_model_len": cfg.model.max_model_len,
        "top_k": run.top_k or None,
        "datasets": datasets,
        "overall": overall,
        "gate": {"passed": judged.verdict.passed, "use": cfg.thresholds.use, "confidence": cfg.thresholds.confidence,
                 "summary": judged.verdict.summary()},
        "tasks": list(judged.task_rows),
        "baselines": {n: baseline_origin(run.store.path(cfg.name, n), b) for n, b in judged.baselines.items()},
        "bf16_engine": {k: b0.provenance.get(k) for k in ("engine_kwargs", "engine_start_s", "engine_start", "offload")},
        "checkpoints": checkpoints_block(Path(run.source.path), ck.path, ck.info),
        "baseline_updates": update_rows(baseline_updates),
        "recipe_regression": judged.regression,  # None unless the config asks (harness/recipes/records.py)
        "recipe_record": str(judged.recipe_record or "") or None,
        "wall_s": round(time.time() - started, 1),
        "time": time_breakdown,  # brought up to date when the report is written (write_report)
    }


def dataset_row(run, name: str, prep, s, judged, tokenizer) -> dict:
    """One dataset's row of report.json: BF16 (the baseline), the quantized model, the comparison and its limits."""
    b, j = judged.baselines[name], judged.judgements[name]
    c = j.comparison
    return {
        "dataset": name,
        "bf16": {"ppl": b.ppl, "nll": b.nll, "tokens": b.tokens, "kept_texts": b.kept_texts,
                 "eval_s": b.provenance.get("eval_s"), "backend": b.provenance.get("backend"),
                 "device": b.provenance.get("device"), "date": b.provenance.get("date"),
                 **lm_eval_metrics(b.nll * b.tokens, b.words, b.bytes)},
        "nvfp4": {"ppl": s.ppl, "nll": s.nll, "tokens": s.tokens, "kept_texts": prep.stats.kept_texts,
                  "eval_s": round(s.eval_s or 0, 3), "tokens_per_s": s.tokens_per_s, **s.lm_eval_metrics()},
        "score": c.score, "interval": _interval(c), "threshold": j.threshold,
        "threshold_source": j.threshold_source,
        "data": prep.summary(), "token_detail": judged.token_summaries.get(name),
        "distributions": with_token_text(j.distributions, tokenizer),
        "limits": [limit_row(o, run.cfg.thresholds.confidence) for o in j.limits],
    }


def checkpoints_block(bf16_path: Path, ckpt: Path, ckpt_info) -> dict:
    """Both checkpoints' paths and sizes on disk (a BF16 view of an NVFP4 checkpoint has none of its own)."""
    view_of = view_source(bf16_path) if bf16_path.is_dir() else None
    own = disk_size(bf16_path) if bf16_path.is_dir() and not view_of else None
    return {"bf16": {"path": str(bf16_path), "bytes": own, **({"view_of": str(view_of)} if view_of else {})},
            "nvfp4": {"path": str(ckpt), "bytes": disk_size(ckpt), **ckpt_info}}


def limit_row(o, confidence: float) -> dict:
    """A distribution limit's outcome, with the minimum detectable difference its bootstrap interval implies."""
    return {"key": o.key, "value": o.value, "point": o.point, "limit": o.limit, "passed": o.passed,
            "threshold_source": o.threshold_source,
            "mdd": mdd_from_interval(*o.interval, confidence) if o.interval else None}


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


def overall_block(datasets: list[dict], interval: dict | None = None, threshold: float | None = None) -> dict:
    """The overall row: per-dataset NLLs pooled by token count, and the relative score."""
    ref = overall_nll({d["dataset"]: (d["bf16"]["nll"], d["bf16"]["tokens"]) for d in datasets})
    mod = overall_nll({d["dataset"]: (d["nvfp4"]["nll"], d["nvfp4"]["tokens"]) for d in datasets})
    c = compare("overall", ref, mod)
    return {"bf16": {"ppl": c.ppl_ref, "nll": c.nll_ref, "tokens": ref[1]},
            "nvfp4": {"ppl": c.ppl_model, "nll": c.nll_model, "tokens": mod[1]},
            "score": c.score, "interval": interval, "threshold": threshold}


def reference_report(model_dir: Path) -> dict:
    """Tables from stored files alone: ``<model_dir>/<dataset>.json`` (BF16 baselines) against
    ``<model_dir>/reference/nvfp4-<dataset>.json`` (a stored NVFP4 result), e.g. the reference study's."""
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
    """The bootstrap interval of a score, with the minimum detectable difference it implies (score points, one-sided
    alpha 0.05, power 0.8: harness/tasks/paired.py)."""
    i = c.interval
    if i is None:
        return None

    return {"low": i.low, "high": i.high, "confidence": i.confidence, "samples": i.samples,
            "mdd": mdd_from_interval(i.low, i.high, i.confidence)}


def update_rows(pairs) -> list[dict]:
    """(old, new) baseline pairs as the rows baseline_diff_table prints."""
    return [{"dataset": new.dataset, "old": _brief(old), "new": _brief(new)} for old, new in pairs]


def _brief(b) -> dict | None:
    if b is None:
        return None
    return {"ppl": b.ppl, "nll": b.nll, "tokens": b.tokens, "kept_texts": b.kept_texts, "fingerprint": b.fingerprint,
            "backend": b.provenance.get("backend"), "device": b.provenance.get("device"), "date": b.provenance.get("date")}


def baseline_origin(path: Path, b) -> dict:
    """Which BF16 baseline (stored at ``path``) a dataset was compared against: when and where it was scored."""
    p = b.provenance
    return {"path": str(path), "date": p.get("date"), "backend": p.get("backend"),
            "device": p.get("device"), "versions": p.get("versions"), "git_commit": p.get("git_commit"),
            "mode": (p.get("compilation") or {}).get("mode")}


def write_report(rep: dict, reports_dir: Path, log_lines: list[str],
                 token_logprobs: dict[str, list[list[float]]] | None = None, time_breakdown=None) -> Path:
    """Write JSON + Markdown + SVG + logs (the run's, and the vLLM engine's as engine.log) into
    reports_dir/<timestamp>-<model>/, atomically (temp dir, rename). ``time_breakdown()``, when given, restates the
    report's "time" once the chart is drawn, so the report stage counts its own work."""
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
            save_tokens(tmp / f"tokens-{name}.npz", per_doc)
    return folder.final


def token_logprobs(scores) -> dict[str, list[list[float]]]:
    """dataset -> per-document per-token logprobs, for the datasets scored with token_detail."""
    return {n: s.token_logprobs for n, s in scores.datasets.items() if s.token_logprobs is not None}
