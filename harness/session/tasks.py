"""The gate's task steps, plain functions of the run's context (harness/session/context.py): items read and checked
before any engine starts, prepared with the model's tokenizer, BF16 baselines of every item, the paired statistics
and the task outcomes of the verdict (harness/tasks). The session scores them in the engine it already has."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from harness.backends import backend_spec
from harness.backends.data_parallel import parallel_sizes
from harness.data.rules import tokenizer_fingerprint
from harness.errors import BaselineError, ConfigError
from harness.limits import LIMITS
from harness.models import identity
from harness.precision import PRECISIONS
from harness.session.context import RunContext
from harness.tasks import baseline as tb, load
from harness.tasks.baseline import task_path
from harness.tasks.definitions import styled_spec
from harness.tasks.paired import ALPHA, POWER, Paired, flip_indices, items_needed, mdd, paired
from harness.tasks.prepare import build_items, prepare_task
from harness.tasks.results import score_task


@dataclass
class TaskOutcome:
    """One task of the verdict: recovery (and flips, where the config bounds them) against the config's limits."""

    name: str
    metric: str
    paired: Paired
    recovery_min: float
    use: str
    flips_max_pct: float | None
    passed: bool
    gated_value: float

    def message(self) -> str:
        p, rec, fl = self.paired, LIMITS["recovery_min"], LIMITS["flips_max_pct"]
        ci = (f" [CI {rec.fmt(p.recovery_interval[0])}..{rec.fmt(p.recovery_interval[1])}]" if p.recovery_interval
              and all(math.isfinite(x) for x in p.recovery_interval) else "")
        basis = f"{rec.label} lower bound" if self.gated_value != p.recovery else rec.label
        rec_ok = rec.passes(self.gated_value, self.recovery_min)
        flips = f"{fl.label} {p.lost} lost / {p.gained} gained ({fl.fmt(p.flips_pct)}{fl.unit} of {p.n})"
        if self.flips_max_pct is not None:
            ok = fl.passes(p.flips_pct, self.flips_max_pct)
            flips += f" {fl.relation(ok)} {fl.kind} {fl.fmt(self.flips_max_pct)}{fl.unit}"
        return (f"{'ok  ' if self.passed else 'FAIL'} task {self.name}: {basis} {rec.fmt(self.gated_value)} "
                f"{rec.relation(rec_ok)} {rec.kind} {rec.fmt(self.recovery_min)}{ci} ({self.metric} "
                f"{100 * p.acc_model:.2f} vs BF16 {100 * p.acc_ref:.2f}); {flips}, McNemar p {p.p_value:.3g}; "
                f"MDD {100 * p.mdd:.1f} pts")


def judge_task(name: str, metric: str, p: Paired, cfg) -> TaskOutcome:
    """Pass when the recovery (or its lower bound, ``use: lower``) is at least recovery_min and, where set, the share
    of flipped items at most flips_max_pct."""
    lower = cfg.use == "lower" and p.recovery_interval is not None and math.isfinite(p.recovery_interval[0])
    value = p.recovery_interval[0] if lower else p.recovery
    passed = LIMITS["recovery_min"].passes(value, cfg.recovery_min) and (
        cfg.flips_max_pct is None or LIMITS["flips_max_pct"].passes(p.flips_pct, cfg.flips_max_pct))
    return TaskOutcome(name=name, metric=metric, paired=p, recovery_min=cfg.recovery_min, use=cfg.use,
                       flips_max_pct=cfg.flips_max_pct, passed=passed, gated_value=value)


def definition(cfg, name: str):
    """The config's task ``name`` as defined (its ``task:``, else the name) in its prompt style."""
    tc = cfg.tasks[name]
    return styled_spec(tc.definition(name), tc.style)


def metric(cfg, name: str) -> str:
    return cfg.tasks[name].metric or definition(cfg, name).metrics[0]


def check_backend(ctx: RunContext) -> None:
    """A generated task (gsm8k) needs a generate path: the harness's data-parallel vLLM engines have none yet.
    Said before anything is quantized or started."""
    generated = [n for n in ctx.tasks if definition(ctx.cfg, n).kind == "generate"]
    if not generated or not backend_spec(ctx.backend).data_parallel:
        return

    for precision in PRECISIONS:
        if parallel_sizes(ctx.cfg.engine_kwargs(precision, ctx.backend))[0] > 1:
            raise ConfigError(f"tasks.{generated[0]} is generated, and the harness's data-parallel engines "
                              f"(model.engine.{precision}.{ctx.backend}.data_parallel_size > 1) have no "
                              "generation path yet: drop the task, or use data_parallel_size 1 (tensor_parallel_size"
                              " spreads one engine over several GPUs)")


def read_items(ctx: RunContext, name: str) -> tuple:
    """The task's items and where they came from, read and checked (sha256, rows, schema: file:line) without a
    tokenizer: cheap enough to run before any engine starts."""
    spec, tc = definition(ctx.cfg, name), ctx.cfg.tasks[name]
    if tc.source is None:
        rows, where = load.shipped_rows(spec)
    else:
        rows, where = load.source_rows(tc.source, ctx.cfg.resolve_files)
    shots = load.fewshot_rows(spec) if spec.kind == "generate" else None
    return build_items(spec, rows, where, tc.limit, shots), where


def prepare(ctx: RunContext, name: str, items, where: str, tok):
    """The task's requests, tokenized with the model's tokenizer (tasks.prepare.PreparedTask)."""
    m = ctx.cfg.model
    p = prepare_task(definition(ctx.cfg, name), items, tok, max_model_len=m.max_model_len,
                     add_special_tokens=m.add_special_tokens, source=where,
                     tokenizer_id=tokenizer_fingerprint(tok),  # its vocabulary, not where it lies
                     chat_template=ctx.cfg.tasks[name].chat_template, name=name)
    ctx.log(f"task {name}: {p.n} items, {len(p.requests) or len(p.prompts)} requests, fingerprint "
            f"{p.fingerprint} ({where})")
    return p


def score(ctx: RunContext, name: str, prep, eng, progress, precision: str):
    """The task scored in a started engine (each distinct request once: tasks.results.score_task)."""
    s = score_task(eng, prep, progress=progress)
    ctx.log(f"task {name} {precision}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.metrics().items())
            + f" ({s.n} items in {s.eval_s:.1f}s)")
    return s


def baseline_path(ctx: RunContext, name: str) -> Path:
    own = task_path(ctx.store.root, ctx.cfg.name, name)
    if not own.exists() and ctx.store.fallback is not None:
        shipped = task_path(ctx.store.fallback, ctx.cfg.name, name)
        if shipped.exists():
            return shipped
    return own


def load_baseline(ctx: RunContext, name: str):
    """The task's stored BF16 baseline, refused when it was scored on another model."""
    path = baseline_path(ctx, name)
    b = tb.load(path, ctx.cfg.name, name, ctx.update_hint)
    ident = b.provenance.get("model_identity")
    if ident:
        why = identity.baseline_mismatches(ident, ctx.identity, None, None)
        if why:
            raise BaselineError(f"{path}: scored on another model than this config's ({'; '.join(why)}); "
                                f"rebuild it with: {ctx.update_hint}")
    return b


def check_items(ctx: RunContext, name: str, b, prep) -> None:
    """The baseline's items are this run's (fingerprint, count): else it names the command that rebuilds it."""
    tb.check_matches(b, prep, baseline_path(ctx, name), ctx.update_hint)


def check_updates(ctx: RunContext, prepared_of) -> None:
    """Before an update scores anything: a task baseline whose items changed (``prepared_of(name)``: this run's) is
    replaced only with --force."""
    for name in ctx.tasks:
        old = baseline_path(ctx, name)
        if not old.exists() or ctx.force:
            continue
        try:
            prev = tb.load(old, ctx.cfg.name, name, ctx.update_hint)
        except BaselineError as e:
            ctx.log(f"replacing unreadable task baseline: {e}")
            continue
        fp = prepared_of(name).fingerprint
        if prev.fingerprint != fp:
            raise BaselineError(f"{old}: task {name}'s items changed (fingerprint {prev.fingerprint} -> {fp}: "
                                "limit, source, tokenizer or prompt); nothing was scored or written. Re-run with "
                                "--force to accept them.")


def write_baseline(ctx: RunContext, name: str, prep, s, info: dict) -> Path:
    """The task's BF16 baseline from its BF16 score (``info``: the BF16 engine's), written."""
    prov = {"backend": ctx.backend, "device": info.get("device"), "versions": info.get("versions", {}),
            "dtype": info.get("dtype"), "model_path": ctx.cfg.model.path, "model_identity": ctx.identity,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "eval_s": round(s.eval_s, 3)}
    p = tb.write(ctx.store.root, tb.baseline_from_score(ctx.cfg.name, prep, s, prov, ctx.cfg.tasks[name].limit))
    ctx.log(f"wrote task baseline {p}")
    return p


def paired_answers(ctx: RunContext, name: str, b, s) -> Paired:
    """The paired statistics of BF16's (``b``) and this run's (``s``) answers to the same items, on the task's
    gated metric."""
    m, t = metric(ctx.cfg, name), ctx.cfg.thresholds
    return paired(b.correct[m], s.correct[m], samples=t.bootstrap_samples, confidence=t.confidence, seed=t.seed)


def sizing_notes(ctx: RunContext, baseline_of) -> list[str]:
    """Tasks whose recovery_min asks for a smaller drop than their n can detect (sizing_note), said before any
    engine starts, from the BF16 baseline's accuracy (``baseline_of(name)``)."""
    notes = [sizing_note(n, ctx.cfg.tasks[n], baseline_of(n), metric(ctx.cfg, n)) for n in ctx.tasks]
    return [n for n in notes if n]


def task_row(o: TaskOutcome, b, s, source) -> dict:
    """One task's row of the report: both sides' metrics, the gated metric's paired statistics and the flipped items."""
    return {"task": o.name, "metric": o.metric, "n": o.paired.n, "bf16": b.metrics, "nvfp4": s.metrics(),
            "paired": o.paired.to_dict(), "recovery_min": o.recovery_min, "use": o.use,
            "flips_max_pct": o.flips_max_pct, "passed": o.passed, "gated_value": o.gated_value,
            "eval_s": round(s.eval_s, 3), "contexts_shared": s.shared, "source": source,
            "flipped_items": flipped_items(b.correct[o.metric], s.correct[o.metric])}


def sizing_note(name: str, tc, b, metric: str) -> str | None:
    """A task whose recovery_min asks for a smaller drop than its n can detect (TensorRT-LLM's sizing): a drop of d
    needs at least d * n items to flip, and even then a paired test of n items detects it only from
    n >= (z_alpha + z_beta)^2 / d. None where the baseline's n can detect it."""
    acc = b.metrics.get(metric)
    if acc is None or acc <= 0:
        return None
    drop = (1 - tc.recovery_min) * acc
    if not (b.n and mdd(b.n, drop) > drop):
        return None
    need = items_needed(drop, drop)
    return (f"task {name}: recovery_min {tc.recovery_min} allows a drop of {100 * drop:.2f} points "
            f"from BF16's {100 * acc:.2f}; {b.n} items cannot detect it (one-sided alpha {ALPHA}, "
            f"power {POWER}: the smallest detectable drop is {100 * mdd(b.n, drop):.2f} points even "
            f"if every flip went one way). It needs at least {need} items"
            + (f" (limit {tc.limit})" if tc.limit else "") + ", or a lower recovery_min")


def flipped_items(ref, model, most: int = 50) -> dict:
    """Which items flipped (0-based indices into the task's items), at most ``most`` of each way."""
    lost, gained = flip_indices(ref, model)
    return {"lost": lost[:most], "gained": gained[:most]}
