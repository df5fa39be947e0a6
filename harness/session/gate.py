"""One gate's lifecycle, shared by the pytest plugin and the CLI: each stage's and step's result made once, and the
one engine alive between stages. What the steps do lives elsewhere: the stages (harness/stages); the baseline,
judging and task steps, plain functions of the run's context (baselines.py, judging.py, tasks.py; context.py);
the order they run in and the checks before any work (flow.py).

prepare data -> (update mode: score BF16, write baselines) -> check data against baselines -> quantize (cached)
-> score the quantized model -> compare -> verdict -> report. The normal gate never starts a BF16 engine."""
from __future__ import annotations

import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from harness.baselines import Baseline
from harness.config.schema import HarnessConfig
from harness.config.sections import apply_hub_environment
from harness.precision import BF16, NVFP4
from harness.quant.quantize import QuantInterpreter
from harness.session import baselines, flow, judging, tasks
from harness.session.context import EXISTING, RunContext, make_context
from harness.session.engines import EngineManager, start_engine
from harness.session.log import RunLog
from harness.stages.judge import Judged, Judgement, Verdict
from harness.stages.prepare import load_tokenizer, prepare_dataset
from harness.stages.provide import CheckpointProvider
from harness.stages.results import Checkpoint, Prepared, Scores

__all__ = ["EXISTING", "GateSession"]


class GateSession:
    def __init__(self, cfg: HarnessConfig, *, backend: str | None = None, min_score: float | None = None,
                 update_baselines: bool = False, force: bool = False, recipe: str | None = None,
                 quant_python: str | None = None, quant_pythonpath: str | None = None, batch_size: int | None = None,
                 update_hint: str | None = None, log=None, quiet: bool = False, token_detail: bool = False,
                 distributions: bool = True, record_recipe: bool = False):
        apply_hub_environment(cfg.hub.environment(cfg.resolve_local))
        self.log = RunLog(quiet, log)
        self.ctx = make_context(cfg, backend=backend, recipe=recipe, min_score=min_score, update_mode=update_baselines,
                                force=force, update_hint=update_hint, distributions=distributions, log=self.log)
        self.batch_size, self.record_recipe = batch_size or cfg.batch_size, record_recipe
        self.token_detail = token_detail or cfg.token_detail
        self.engines = EngineManager(self.log)
        self._memo: dict = {}      # each stage's and step's result, made once
        self._prepared: dict = {}  # dataset -> PreparedDataset (flow.start_beside_prepare: from another process)
        interp = QuantInterpreter.from_env(quant_python or cfg.quantize.python,
                                           cfg.quantize.pythonpath if quant_pythonpath is None else quant_pythonpath)
        self.provider = CheckpointProvider(cfg, self.source, self.recipe_name, self.existing, interp, self.log,
                                           lambda: self.ctx.identity,
                                           partial(baselines.check_checkpoint_architecture, self.ctx))
        self.preflight_done, self.started = False, time.time()
        self.busy = None  # a timings.Busy where the gate shares its process (the pytest plugin): its own wall time

    def __getattr__(self, name: str):  # cfg, backend, recipe_name, existing, source, store, ...: the run's context
        if name != "ctx" and name in RunContext.__dataclass_fields__:
            return getattr(self.ctx, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name in RunContext.__dataclass_fields__ and "ctx" in self.__dict__ and name not in self.__dict__:
            raise AttributeError(f"{name} is the run context's (session.ctx), fixed for the run")
        object.__setattr__(self, name, value)

    def _once(self, key, make, stage: str | None = None):
        if key not in self._memo:
            with self.clock(stage) if stage else nullcontext():
                self._memo[key] = make()
        return self._memo[key]

    dataset_names = property(lambda self: self.ctx.datasets)
    task_names = property(lambda self: self.ctx.tasks)

    def tokenizer(self):
        return self._once("tokenizer", lambda: load_tokenizer(self.cfg, self.source), "prepare")

    def prepared(self, name: str):
        if name not in self._prepared:
            with self.clock("prepare"):
                self._prepared[name] = prepare_dataset(self.cfg, name, self.tokenizer(), self.log)
        return self._prepared[name]

    def prepare_all(self) -> Prepared:
        return Prepared({n: self.prepared(n) for n in self.dataset_names})

    def task_items(self, name: str) -> tuple:
        return self._once(("task_items", name), lambda: tasks.read_items(self.ctx, name), "prepare")

    def prepared_task(self, name: str):
        return self._once(("task", name), lambda: tasks.prepare(self.ctx, name, *self.task_items(name),
                                                                self.tokenizer()), "prepare")

    def recipe(self):
        return self.provider.recipe()

    def checkpoint(self, build: bool = True) -> Checkpoint | None:
        """The provide stage's result; ``build=False``: None where it would have to be built."""
        with self.clock("quantize"):
            return self.provider.checkpoint(build)

    def _engine(self, precision: str):
        model = self.source.path if precision == BF16 else str(self.checkpoint().path)
        return self.engines.get((self.backend, precision, model), lambda: start_engine(
            self.ctx, precision, model, self.batch_size, partial(self._memo.__setitem__, ("engine_info", precision))))

    def start_engine(self, precision: str = NVFP4) -> dict:
        """Start (or keep) the engine for this precision now, e.g. so a benchmark times scoring alone."""
        self._engine(precision)
        return self.engine_info(precision)

    def engine_info(self, precision: str) -> dict:
        return self._memo.get(("engine_info", precision), {})

    def score(self, name: str, precision: str = NVFP4):
        return self._once(("score", name, precision), partial(flow.score, self, name, precision))

    def scores(self, precision: str = NVFP4) -> Scores:
        """The score stage's result: every dataset scored at this precision."""
        return Scores(precision, {n: self.score(n, precision) for n in self.dataset_names}, self.engine_info(precision))

    def scored(self, name: str, precision: str = NVFP4) -> bool:
        return ("score", name, precision) in self._memo

    def task_score(self, name: str, precision: str = NVFP4):
        return self._once(("task_score", name, precision), partial(flow.score_task, self, name, precision))

    def baseline(self, name: str) -> Baseline:
        if self.update_mode:
            self.update_baselines()
        return self._once(("baseline", name), lambda: baselines.load_checked(self.ctx, name, self.prepared(name)))

    def task_baseline(self, name: str, check_items: bool = True):
        if self.update_mode:
            self.update_baselines()
        b = self._once(("task_baseline", name), lambda: tasks.load_baseline(self.ctx, name))
        if check_items:
            tasks.check_items(self.ctx, name, b, self.prepared_task(name))
        return b

    def update_baselines(self) -> list:
        return self._once("updates", partial(flow.update_baselines, self))

    baseline_updates = property(lambda self: self._memo.get("updates", []))

    def judgement(self, name: str | None) -> Judgement:
        """One dataset (``None``: overall): measured once, judged against the thresholds as they are now."""
        c, stats = self._once(("measured", name), partial(flow.measure, self, name))
        return judging.judgement(self.ctx, name, c, stats, None if self.existing else self.recipe())

    def threshold(self, name: str | None) -> tuple[float, str]:
        return judging.threshold(self.ctx, name, None if self.existing else self.recipe())

    def task_outcome(self, name: str):
        p = self._once(("paired", name), lambda: tasks.paired_answers(
            self.ctx, name, self.task_baseline(name), self.task_score(name)), "judging")
        return tasks.judge_task(name, tasks.metric(self.cfg, name), p, self.cfg.tasks[name])

    def recipe_regression(self) -> dict | None:
        return None if self.cfg.recipe_regression is None else flow.recipe_regression(self)

    def judged(self) -> Judged:
        return flow.judge(self)

    def verdict(self) -> Verdict:
        return self.judged().verdict

    def preflight(self, report_dir: Path | None = None, baselines: bool = True) -> None:
        flow.preflight(self, report_dir, baselines)

    def start_beside_prepare(self, report_dir: Path | None = None) -> bool:
        return flow.start_beside_prepare(self, report_dir)

    def time_breakdown(self) -> dict:
        """Seconds per stage so far, and the wall time since the start or, sharing a process, the time it was busy."""
        return self.clock.breakdown(self.busy() if self.busy is not None else time.time() - self.started)

    def close(self) -> None:
        self.engines.close()
