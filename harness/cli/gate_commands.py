"""The commands of a gate's stages: `harness gate`, `quantize`, `score`, `baseline update`, `report` (harness/cli/main.py
dispatches; each returns its exit code)."""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError


def session_for(a, **kw):
    from harness.config.load import load_config
    from harness.config.overrides import parse_set
    from harness.session.gate import GateSession

    overrides = parse_set(getattr(a, "overrides", None))
    if getattr(a, "checkpoint", None):  # a path on the command line is relative to the cwd, not the config
        overrides["model.checkpoint"] = str(Path(a.checkpoint).resolve()) if Path(a.checkpoint).exists() \
            else a.checkpoint
    cfg = load_config(a.config, overrides)
    return GateSession(cfg, backend=getattr(a, "backend", None), recipe=a.recipe,
                       quant_python=getattr(a, "quant_python", None), quant_pythonpath=getattr(a, "quant_pythonpath", None),
                       batch_size=getattr(a, "batch_size", None), **kw)


def cmd_gate(a) -> int:
    from harness.stages.run import run_gate

    s = session_for(a, min_score=a.min_score, update_baselines=a.update_baselines, force=a.force,
                 token_detail=a.token_detail, record_recipe=a.record_recipe)
    try:
        done = run_gate(s, Path(a.report_dir) if a.report_dir else s.cfg.path_of("reports_dir"), show=show_verdict)
    finally:
        s.close()
    print(f"\n{done.time_line}\nreport: {done.folder}/report.md")
    if done.recipe_record:
        print(f"recipe result stored: {done.recipe_record}")
    return 0 if done.verdict.passed else 1


def show_verdict(rep: dict, verdict) -> None:
    from harness.report.markdown import dataset_table, overall_table
    from harness.report.sections import baseline_diff_table, distribution_table, task_table

    if rep["baseline_updates"]:
        print("\nBaseline updates (old -> new, * = changed):\n" + baseline_diff_table(rep["baseline_updates"]))
    print("\n" + dataset_table(rep) + "\n\n" + overall_table(rep) + "\n")
    if rep.get("top_k"):
        print(f"Next-token distributions against BF16 (top-{rep['top_k']}):\n{distribution_table(rep)}\n")
    if rep.get("tasks"):
        print(f"Tasks (the same items under BF16 and quantized):\n{task_table(rep)}\n")
    print(verdict.summary(), flush=True)  # the verdict stands even if the report cannot be written


def cmd_quantize(a) -> int:
    s = session_for(a)
    ck = s.checkpoint()
    path, info = ck.path, ck.info
    print(json.dumps({"path": str(path), **info}, indent=1))
    return 0


def cmd_score(a) -> int:
    s = session_for(a, distributions=False)  # PPL only: the top-k would cost time and go unused
    names = a.dataset or s.dataset_names
    from harness.config.load import check_dataset_names

    check_dataset_names(s.cfg, names)
    rows = []
    try:
        for n in names:
            sc = s.score(n, a.precision)
            rows.append({"dataset": n, "precision": a.precision, "ppl": sc.ppl, "nll": sc.nll, "tokens": sc.tokens,
                         "kept_texts": s.prepared(n).stats.kept_texts, "eval_s": round(sc.eval_s or 0, 3),
                         "kernel": s.engine_info(a.precision).get("kernel")})
    finally:
        s.close()
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        from harness.report.cells import md_table

        print(md_table(["dataset", "precision", "PPL", "NLL", "tokens", "kept_texts", "eval_s"],
                       [[r["dataset"], r["precision"], f"{r['ppl']:.6f}", f"{r['nll']:.6f}", r["tokens"],
                         r["kept_texts"], f"{r['eval_s']:.2f}"] for r in rows], "llrrrrr"))
    return 0


def cmd_baseline(a) -> int:
    from harness.report.build import update_rows
    from harness.report.sections import baseline_diff_table

    s = session_for(a, update_baselines=True, force=a.force, token_detail=a.token_detail)
    try:
        pairs = s.update_baselines()
    finally:
        s.close()
    print(baseline_diff_table(update_rows(pairs)))
    for _, new in pairs:
        print(f"wrote {s.store.path(new.model, new.dataset)}")
        if new.distributions:
            d = new.distributions
            print(f"wrote {s.store.distributions_path(new)} (BF16 top-{d['top_k']} for {d['tokens']} tokens, "
                  f"{d['bytes'] / 2**20:.1f} MiB)")
    return 0


def cmd_report(a) -> int:
    from harness.report.build import reference_report
    from harness.report.markdown import dataset_table, overall_table, render_markdown

    if a.reference:
        rep = reference_report(a.reference)
        print(dataset_table(rep) + "\n\n" + overall_table(rep))
        return 0
    if a.report_json is None:
        raise HarnessError("harness report needs a report.json path (or --reference DIR)")
    try:
        rep = json.loads(a.report_json.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"cannot read report {a.report_json}: {e}") from None
    from harness.report.build import REPORT_SCHEMA

    if not isinstance(rep, dict) or rep.get("schema_version") != REPORT_SCHEMA or "checkpoints" not in rep:
        got = rep.get("schema_version") if isinstance(rep, dict) else type(rep).__name__
        raise HarnessError(f"{a.report_json} is not a harness report (schema_version {got!r}; this harness writes "
                           f"{REPORT_SCHEMA}): give the report.json of a `harness gate` run, or --reference DIR")
    md = render_markdown(rep)
    if a.out:
        from harness.atomic import atomic_write_text

        atomic_write_text(a.out, md)
        print(f"wrote {a.out}")
    else:
        print(md)
    return 0
