"""The gate's orchestration around its stages, functions of a GateSession (harness/session/gate.py): the checks
before any quantization or engine start (preflight), the engine's start beside data preparation, the baseline
update, and the judge stage's whole result (with the recipe record and regression)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.backends import backend_spec, load_class
from harness.data import files as data_files
from harness.errors import ConfigError, HarnessError
from harness.precision import BF16, NVFP4
from harness.recipes import records
from harness.recipes.compare import bf16_documents
from harness.session import baselines, judging, tasks
from harness.stages.judge import Judged
from harness.stages.preflight import check_backend_installed, check_writable_dir, scheme_refusal
from harness.stages.prepare_ahead import PrepareAhead
from harness.stages.score import score_dataset


def preflight(session, report_dir: Path | None = None, check_baselines: bool = True) -> None:
    """Before any quantization or engine start of a gate, everything that needs no GPU: the backend's libraries,
    where the report goes, every dataset prepared (its stats checked) with its baseline present, made from the
    same data and the same model, its side files intact, and a recipe vLLM can run. Each fault found here costs
    seconds, not an hour of quantization or an engine start. ``check_baselines=False``: another session of this run
    writes them first (pytest --update-baselines serves every recipe with one update), so they are checked later."""
    if session.preflight_done:
        return

    ctx = session.ctx
    tasks.check_backend(ctx)
    if not ctx.existing:  # the recipe first (its threshold keys; a scheme the backend runs): the input's faults
        scheme = session.recipe().scheme  # before the environment's
        refuse = backend_spec(ctx.backend).refuse_scheme
        why = load_class(refuse)(scheme) if refuse else None
        if why:
            raise ConfigError(scheme_refusal(ctx.cfg, ctx.backend, ctx.recipe_name, scheme, why))
    check_backend_installed(ctx.backend)
    if report_dir is not None:
        check_writable_dir(report_dir, "report folder", "pick another with --report-dir (pytest: "
                                                        "--harness-report-dir) or reports_dir in the config")
    check_data_files(ctx)
    session.provider.warm_up()  # the input and environment pass so far: llm-compressor imports while data loads
    for t in ctx.tasks:  # every task's rows read and checked (file:line) before any engine starts
        session.task_items(t)
    if check_baselines and not ctx.update_mode:
        for n in ctx.datasets:
            session.baseline(n)
        for t in ctx.tasks:
            session.task_baseline(t)
        for note in tasks.sizing_notes(ctx, lambda t: session.task_baseline(t, check_items=False)):
            ctx.note_once(note)
    rr = ctx.cfg.recipe_regression
    if rr is not None and not (session.record_recipe and ctx.recipe_name == rr.best):  # stored in this run
        records.load_record(ctx.cfg.path_of("baselines_dir"), ctx.cfg.name, rr.best,
                            records.record_hint(ctx.cfg, rr.best))
    session.preflight_done = check_baselines or ctx.update_mode


def check_data_files(ctx) -> None:
    """Every local file the datasets read: there, not empty, parseable (a malformed JSON line by file:line),
    before anything is quantized or started and before the data is prepared (beside the engine's start it is
    prepared in another process, after the start has begun). The calibration's files are checked where a build
    is due, before its interpreter starts (stages/provide.py)."""
    for n in ctx.datasets:
        s = ctx.cfg.datasets[n].source
        data_files.check_data_files(data_files.local_data_files(ctx.cfg.resolve(s.path), s.split,
                                                                ctx.cfg.resolve_files(s.data_files)))


def start_beside_prepare(session, report_dir: Path | None = None) -> bool:
    """A gate whose checkpoint is ready (cached, or an existing one) starts its engine while its data is prepared
    in a process of its own (harness/stages/prepare_ahead.py), then checks the data against the baselines (preflight)
    before anything is scored: a mismatch closes the engine and stops the gate as before. Everything else is
    checked first: the recipe, the backend's libraries, the report folder, each baseline's file, model and
    distributions. False, with nothing started, where it does not apply: prepare_beside_engine false; unset and
    the backend needs a GPU (on the H200 vLLM's start slowed by about what the overlap saved, docs/results), one
    CPU core, or transformers already loaded here (preparing here is then quick); a baseline update; data already
    prepared; a checkpoint still to build."""
    ctx = session.ctx
    want = ctx.cfg.prepare_beside_engine
    if want is None:  # a fresh CPU gate on 2+ cores: the other imports the tokenizer's library while this starts
        want = (not backend_spec(ctx.backend).needs_gpu and (os.cpu_count() or 1) >= 2
                and "transformers" not in sys.modules)  # loaded: preparing here is quick
    if ctx.update_mode or session._prepared or session.preflight_done or not want:
        return False
    preflight(session, report_dir, check_baselines=False)
    for n in ctx.datasets:  # present, readable, of this model, with its distributions: before any start
        baselines.check_stored(ctx, ctx.store.load(ctx.cfg.name, n))
    for t in ctx.tasks:  # the task's rows and its baseline's file (its items are checked once tokenized)
        session.task_items(t)
        session.task_baseline(t, check_items=False)
    if session.checkpoint(build=False) is None:
        return False

    ahead = PrepareAhead(ctx.cfg, ctx.datasets)
    ctx.log(f"preparing the data in process {ahead.pid} while the engine starts")
    try:
        session._engine(NVFP4)
    except BaseException:
        ahead.close()
        raise
    try:
        with ctx.clock("prepare"):  # what the engine start did not cover
            prepared, lines, seconds = ahead.result()
    except BaseException as e:  # its error (or an interrupt while waiting): the engine goes too
        session.log.lines.extend(getattr(e, "child_log", []))
        session.close()
        raise
    for ln in lines:
        session.log.emit(ln)
    session._prepared.update(prepared)
    ctx.clock.beside("prepare", seconds, "engine_start")
    try:
        preflight(session, report_dir)  # the data against the baselines, now that it is here
    except HarnessError:
        session.close()
        raise
    return True


def score(session, name: str, precision: str):
    """One dataset scored at ``precision`` in the session's engine (a quantized one only after preflight)."""
    if precision != BF16:
        preflight(session)  # baselines and data checked before any quantization or engine start
    prep, eng, log = session.prepared(name), session._engine(precision), session.log
    log(f"scoring {name} ({len(prep.token_ids)} texts, {prep.stats.total_tokens} tokens) "
        f"with {session.backend}/{precision}")
    with session.clock("scoring"), log.progress(f"{name} {precision}", eng, [len(d) for d in prep.token_ids]) as p:
        s = score_dataset(eng, prep, top_k=session.top_k, token_detail=session.token_detail, progress=p)
    log(f"{name} {precision}: PPL {s.ppl:.4f} NLL {s.nll:.6f} tokens {s.tokens} in {s.eval_s:.1f}s")
    return s


def score_task(session, name: str, precision: str):
    """One task scored in the session's engine, the one the datasets were scored in (no second start)."""
    if precision != BF16:
        preflight(session)
    prep, eng = session.prepared_task(name), session._engine(precision)
    sizes = [len(c) + len(t) for c, t in prep.distinct_requests]  # what score_task sends, each distinct one once
    with session.clock("scoring"), session.log.progress(f"task {name} {precision}", eng, sizes, "requests") as p:
        return tasks.score(session.ctx, name, prep, eng, p, precision)


def measure(session, name: str | None):
    """What judging a dataset (``None``: all of them pooled) measures once (judging.measure)."""
    names = session.dataset_names if name is None else [name]
    bs, ss = {n: session.baseline(n) for n in names}, {n: session.score(n) for n in names}
    tm = {n: session._once(("tokens", n), lambda n=n: judging.token_metrics(session.ctx, bs[n], ss[n]))
          for n in names} if session.top_k else None
    with session.clock("judging"):
        return judging.measure(session.ctx, name, bs, ss, tm)


def update_baselines(session) -> list:
    """Score BF16 on every dataset with one engine (every task too, in the same engine), then write every baseline
    (a changed data or task fingerprint is refused before anything is scored); returns (old, new) pairs."""
    ctx = session.ctx
    prepared = session.prepare_all()
    olds = {n: baselines.old_baseline(ctx, n, prepared[n]) for n in ctx.datasets}
    tasks.check_updates(ctx, session.prepared_task)
    bf16 = session.scores(BF16)
    for t in ctx.tasks:  # the same BF16 engine: every task's items, written beside the datasets'
        tasks.write_baseline(ctx, t, session.prepared_task(t), session.task_score(t, BF16),
                             session.engine_info(BF16))
    session.engines.close()
    return baselines.write_updates(ctx, olds, prepared, bf16)


def recipe_record(session) -> Path | None:
    """With record_recipe, once every dataset is scored: this run's recipe result, written (once) where
    recipe_regression reads it."""
    ctx = session.ctx
    if not session.record_recipe or not all(session.scored(n) for n in ctx.datasets):
        return None

    def write():
        rec = records.make_record(ctx, None if ctx.existing else session.recipe(), session.judgement(None).comparison,
                                  session.prepare_all(), session.scores())
        path = records.write_record(ctx.cfg.path_of("baselines_dir"), rec)
        ctx.log(f"recipe result stored: {path}")
        return path
    return session._once("record", write)


def recipe_regression(session) -> dict:
    """This recipe against the stored result of the config's best recipe (records.regression)."""
    recipe_record(session)  # recording the best recipe itself: it is checked against what this run measured

    ctx = session.ctx
    return session._once("regression", lambda: records.regression(
        ctx.cfg, bf16_documents({n: session.baseline(n) for n in ctx.datasets}, ctx.update_hint),
        session.scores(), session.prepare_all()), "judging")


def judge(session) -> Judged:
    """The judge stage's whole result, once every dataset (and task) is scored: each judgement, the task outcomes and
    report rows, the recipe record and regression, the per-token summaries, and the verdict."""
    ctx = session.ctx
    record = recipe_record(session)  # stored before the verdict pairs recipes with it
    names = ctx.datasets
    js = {n: session.judgement(n) for n in [*names, None]}
    outs = [session.task_outcome(t) for t in ctx.tasks]
    bs = {n: session.baseline(n) for n in names}
    regression = session.recipe_regression()
    with ctx.clock("judging"):
        v = judging.verdict(ctx, js, outs, regression, session.engine_info(NVFP4), bs)
    rows = [tasks.task_row(o, session.task_baseline(o.name), session.task_score(o.name),
                           session.prepared_task(o.name).source) for o in outs]
    sums = {n: judging.token_summary(ctx, n, session.score(n)) for n in names}
    return Judged(v, js, bs, sums, tuple(outs), tuple(rows), regression, record)
