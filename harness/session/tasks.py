"""The gate session's tasks (a part of harness.session.gate.GateSession): items read and checked before any engine starts,
scored in the engine the gate already has (no second start), BF16 baselines of every item, the paired statistics and
the task outcomes of the verdict (harness/tasks)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from harness.tasks.paired import Paired


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
        p = self.paired
        ci = (f" [CI {p.recovery_interval[0]:.3f}..{p.recovery_interval[1]:.3f}]" if p.recovery_interval
              and all(math.isfinite(x) for x in p.recovery_interval) else "")
        basis = "recovery lower bound" if self.gated_value != p.recovery else "recovery"
        rec_ok = self.gated_value >= self.recovery_min
        flips = f"flips {p.lost} lost / {p.gained} gained ({p.flips_pct:.1f}% of {p.n})"
        if self.flips_max_pct is not None:
            flips += f" {'<=' if p.flips_pct <= self.flips_max_pct else '>'} max {self.flips_max_pct:.1f}%"
        return (f"{'ok  ' if self.passed else 'FAIL'} task {self.name}: {basis} {self.gated_value:.3f} "
                f"{'>=' if rec_ok else '<'} min {self.recovery_min:.3f}{ci} ({self.metric} {100 * p.acc_model:.2f} vs "
                f"BF16 {100 * p.acc_ref:.2f}); {flips}, McNemar p {p.p_value:.3g}; MDD {100 * p.mdd:.1f} pts")


def judge_task(name: str, metric: str, p: Paired, cfg) -> TaskOutcome:
    """Pass when the recovery (or its lower bound, ``use: lower``) is at least recovery_min and, where set, the share
    of flipped items at most flips_max_pct."""
    lower = cfg.use == "lower" and p.recovery_interval is not None and math.isfinite(p.recovery_interval[0])
    value = p.recovery_interval[0] if lower else p.recovery
    passed = value >= cfg.recovery_min and (cfg.flips_max_pct is None or p.flips_pct <= cfg.flips_max_pct)
    return TaskOutcome(name=name, metric=metric, paired=p, recovery_min=cfg.recovery_min, use=cfg.use,
                       flips_max_pct=cfg.flips_max_pct, passed=passed, gated_value=value)


class TaskSteps:
    @property
    def task_names(self) -> list[str]:
        return list(self.cfg.tasks)

    def task_definition(self, name: str):
        """The config's task ``name`` as defined (its ``task:``, else the name) in its prompt style."""
        from harness.tasks.definitions import styled_spec

        tc = self.cfg.tasks[name]
        return styled_spec(tc.definition(name), tc.style)

    def task_metric(self, name: str) -> str:
        return self.cfg.tasks[name].metric or self.task_definition(name).metrics[0]

    def check_task_backend(self) -> None:
        """A generated task (gsm8k) needs a generate path: the harness's data-parallel vLLM engines have none yet.
        Said before anything is quantized or started."""
        from harness.backends import backend_spec

        generated = [n for n in self.task_names if self.task_definition(n).kind == "generate"]
        if not generated or not backend_spec(self.backend).data_parallel:
            return
        from harness.backends.data_parallel import parallel_sizes
        from harness.errors import ConfigError

        for precision in ("bf16", "nvfp4"):
            if parallel_sizes(self.cfg.engine_kwargs(precision, self.backend))[0] > 1:
                raise ConfigError(f"tasks.{generated[0]} is generated, and the harness's data-parallel engines "
                                  f"(model.engine.{precision}.{self.backend}.data_parallel_size > 1) have no "
                                  "generation path yet: drop the task, or use data_parallel_size 1 (tensor_parallel_size"
                                  " spreads one engine over several GPUs)")

    # ---- data ---------------------------------------------------------------
    def task_items(self, name: str):
        """The task's items, read and checked (sha256, rows, schema: file:line) without a tokenizer: cheap enough to
        run before any engine starts."""
        if name not in self._task_items:
            from harness.tasks import load
            from harness.tasks.prepare import build_items

            spec, tc = self.task_definition(name), self.cfg.tasks[name]
            with self.clock("prepare"):
                if tc.source is None:
                    rows, where = load.shipped_rows(spec)
                else:
                    rows, where = load.source_rows(tc.source, self.cfg.resolve_files)
                shots = load.fewshot_rows(spec) if spec.kind == "generate" else None
                self._task_items[name] = (build_items(spec, rows, where, tc.limit, shots), where)
        return self._task_items[name]

    def prepared_task(self, name: str):
        if name not in self._task_prepared:
            from harness.data.rules import tokenizer_fingerprint
            from harness.tasks.prepare import prepare_task

            items, where = self.task_items(name)
            tok = self.tokenizer()
            with self.clock("prepare"):
                p = prepare_task(self.task_definition(name), items, tok, max_model_len=self.cfg.model.max_model_len,
                                 add_special_tokens=self.cfg.model.add_special_tokens, source=where,
                                 tokenizer_id=tokenizer_fingerprint(tok),  # its vocabulary, not where it lies
                                 chat_template=self.cfg.tasks[name].chat_template, name=name)
            self.log(f"task {name}: {p.n} items, {len(p.requests) or len(p.prompts)} requests, fingerprint "
                     f"{p.fingerprint} ({where})")
            self._task_prepared[name] = p
        return self._task_prepared[name]

    # ---- scoring ------------------------------------------------------------
    def task_score(self, name: str, precision: str = "nvfp4"):
        key = (name, precision)
        if key not in self._task_scores:
            if precision != "bf16":
                self.preflight()
            prep = self.prepared_task(name)
            eng = self._engine(precision)
            from harness.stages.progress import ScoringProgress
            from harness.tasks.results import score_task

            unique = prep.distinct_requests  # what score_task sends (each distinct request once)
            calls_back = getattr(eng, "reports_progress", False)
            with self.clock("scoring"), ScoringProgress(f"task {name} {precision}", len(unique), unit="requests",
                                                        bar=self._shows_progress() and calls_back,
                                                        pulse=self.log if calls_back else None,
                                                        sizes=[len(c) + len(t) for c, t in unique]) as progress:
                s = score_task(eng, prep, progress=progress)
            m = s.metrics()
            self.log(f"task {name} {precision}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
                     + f" ({s.n} items in {s.eval_s:.1f}s)")
            self._task_scores[key] = s
        return self._task_scores[key]

    # ---- baselines ----------------------------------------------------------
    def task_baseline_path(self, name: str) -> Path:
        from harness.tasks.baseline import task_path

        own = task_path(self.store.root, self.cfg.name, name)
        if not own.exists() and self.store.fallback is not None:
            shipped = task_path(self.store.fallback, self.cfg.name, name)
            if shipped.exists():
                return shipped
        return own

    def task_baseline(self, name: str, check_items: bool = True):
        if self.update_mode and not self._updated:
            self.update_baselines()
        from harness.tasks import baseline as tb

        path = self.task_baseline_path(name)
        if name not in self._task_baselines:  # read (hellaswag's: 0.8 MB) and checked once per session
            b = tb.load(path, self.cfg.name, name, self.update_hint)
            ident = b.provenance.get("model_identity")
            if ident:
                from harness.models import identity

                why = identity.baseline_mismatches(ident, self.model_identity(), None, None)
                if why:
                    from harness.errors import BaselineError

                    raise BaselineError(f"{path}: scored on another model than this config's ({'; '.join(why)}); "
                                        f"rebuild it with: {self.update_hint}")
            self._task_baselines[name] = b
        b = self._task_baselines[name]
        if check_items:
            tb.check_matches(b, self.prepared_task(name), path, self.update_hint)
        return b

    def check_task_updates(self) -> None:
        """Before an update scores anything: a task baseline whose items changed is replaced only with --force."""
        from harness.errors import BaselineError
        from harness.tasks import baseline as tb

        for name in self.task_names:
            old = self.task_baseline_path(name)
            if not old.exists() or self.force:
                continue
            try:
                prev = tb.load(old, self.cfg.name, name, self.update_hint)
            except BaselineError as e:
                self.log(f"replacing unreadable task baseline: {e}")
                continue
            fp = self.prepared_task(name).fingerprint
            if prev.fingerprint != fp:
                raise BaselineError(f"{old}: task {name}'s items changed (fingerprint {prev.fingerprint} -> {fp}: "
                                    "limit, source, tokenizer or prompt); nothing was scored or written. Re-run with "
                                    "--force to accept them.")

    def update_task_baselines(self) -> list[Path]:
        """Score every task with the BF16 engine the dataset update started, and write each baseline."""
        from harness.tasks import baseline as tb

        written = []
        for name in self.task_names:
            prep = self.prepared_task(name)
            s = self.task_score(name, "bf16")
            info = self.engine_info("bf16")
            prov = {"backend": self.backend, "device": info.get("device"), "versions": info.get("versions", {}),
                    "dtype": info.get("dtype"), "model_path": self.cfg.model.path,
                    "model_identity": self.model_identity(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "eval_s": round(s.eval_s, 3)}
            p = tb.write(self.store.root, tb.baseline_from_score(self.cfg.name, prep, s, prov,
                                                                  self.cfg.tasks[name].limit))
            self.log(f"wrote task baseline {p}")
            written.append(p)
        return written

    # ---- judging ------------------------------------------------------------
    def task_paired(self, name: str) -> Paired:
        if name not in self._task_paired:
            from harness.tasks.paired import paired

            metric = self.task_metric(name)
            b = self.task_baseline(name)
            s = self.task_score(name)
            t = self.cfg.thresholds
            with self.clock("judging"):
                self._task_paired[name] = paired(b.correct[metric], s.correct[metric], samples=t.bootstrap_samples,
                                                 confidence=t.confidence, seed=t.seed)
        return self._task_paired[name]

    def task_sizing_notes(self) -> list[str]:
        """Tasks whose recovery_min asks for a smaller drop than their n can detect (sizing_note), said before any
        engine starts, from the BF16 baseline's accuracy."""
        notes = [sizing_note(n, self.cfg.tasks[n], self.task_baseline(n, check_items=False), self.task_metric(n))
                 for n in self.task_names]
        return [n for n in notes if n]

    def task_outcome(self, name: str) -> TaskOutcome:
        return judge_task(name, self.task_metric(name), self.task_paired(name), self.cfg.tasks[name])

    def task_outcomes(self) -> list[TaskOutcome]:
        return [self.task_outcome(n) for n in self.task_names]

    def task_rows(self) -> list[dict]:
        """The report's task table: every metric of both sides, the gated one's paired statistics."""
        return [task_row(o, self.task_baseline(o.name), self.task_score(o.name), self.prepared_task(o.name).source)
                for o in self.task_outcomes()]


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
    from harness.tasks.paired import ALPHA, POWER, items_needed, mdd

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
    from harness.tasks.paired import flip_indices

    lost, gained = flip_indices(ref, model)
    return {"lost": lost[:most], "gained": gained[:most]}
