"""The gate's workflow, shared by the pytest plugin and the CLI.

prepare data -> (update mode: score BF16, write baselines) -> check data against baselines -> quantize (cached)
-> score the quantized model -> compare -> verdict -> report. The normal gate never starts a BF16 engine, and only
one engine is alive at a time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.baselines import Baseline, BaselineStore
from harness.config.schema import HarnessConfig
from harness.data.rules import PreparedDataset
from harness.session.engines import EngineManager
from harness.errors import ConfigError, HarnessError
from harness.fidelity import check_kernel
from harness.metrics import Comparison, DatasetScore
from harness.stages.preflight import model_source, scheme_refusal
from harness.stages.prepare import load_tokenizer, prepare_dataset
from harness.stages.progress import ScoringProgress
from harness.stages.provide import CheckpointProvider
from harness.session.baselines import BaselineSteps
from harness.session.judging import JudgingSteps
from harness.session.tasks import TaskSteps
from harness.stages.results import Checkpoint, Prepared, Scores
from harness.stages.score import score_dataset
from harness.timings import StageClock


EXISTING = "checkpoint"  # the recipe label of a run that gates an existing checkpoint


class GateSession(BaselineSteps, JudgingSteps, TaskSteps):
    def __init__(self, cfg: HarnessConfig, *, backend: str | None = None, min_score: float | None = None,
                 update_baselines: bool = False, force: bool = False, recipe: str | None = None,
                 quant_python: str | None = None, quant_pythonpath: str | None = None, batch_size: int | None = None,
                 update_hint: str | None = None, log=None, quiet: bool = False, token_detail: bool = False,
                 distributions: bool = True, record_recipe: bool = False):
        from harness.config.sections import apply_hub_environment
        from harness.quant.quantize import QuantInterpreter

        apply_hub_environment(cfg.hub.environment(cfg.resolve_local))
        self.cfg = cfg
        self.backend = backend or cfg.backend
        self.min_score = min_score
        self.update_mode = update_baselines
        self.force = force
        self.existing = cfg.model.checkpoint  # gate this quantized checkpoint as it is
        if self.existing and recipe and recipe != EXISTING:
            raise ConfigError(f"--recipe {recipe}: the config gates an existing checkpoint ({self.existing}), which "
                              "is not quantized here; drop --recipe or model.checkpoint")
        self.recipe_name = EXISTING if self.existing else (recipe or cfg.recipe)
        self.batch_size = batch_size or cfg.batch_size
        self.token_detail = token_detail or cfg.token_detail
        # 0: no next-token distributions (config off, or a caller that only wants PPL: `harness score`)
        self.top_k = cfg.distributions.top_k if cfg.distributions and distributions else 0
        self.interp = QuantInterpreter.from_env(quant_python or cfg.quantize.python,
                                                quant_pythonpath if quant_pythonpath is not None else cfg.quantize.pythonpath)
        self.source = model_source(cfg)  # model.path located once: every stage reads it from here
        self.update_hint = update_hint or default_update_hint(cfg)
        self.store = BaselineStore(cfg.path_of("baselines_dir"), self.update_hint, cfg.fallback_baselines_dir)
        self.log_lines: list[str] = []
        self._quiet = quiet
        self._external_log = log
        self.engines = EngineManager(self.log)
        self._tokenizer = None
        self._prepared: dict[str, PreparedDataset] = {}
        self._scores: dict[tuple[str, str], DatasetScore] = {}
        self._engine_info: dict[str, dict] = {}
        self._comparisons: dict[str | None, Comparison] = {}
        self._token_metrics: dict[str, object] = {}
        self._distribution_stats: dict[str | None, dict] = {}
        self._task_items: dict[str, tuple] = {}      # task -> (items, where from): read before any engine starts
        self._task_prepared: dict[str, object] = {}  # task -> tasks.prepare.PreparedTask
        self._task_scores: dict[tuple[str, str], object] = {}
        self._task_paired: dict[str, object] = {}
        self._task_baselines: dict[str, object] = {}  # task -> tasks.baseline.TaskBaseline, read once
        self.provider = CheckpointProvider(cfg, self.source, self.recipe_name, self.existing, self.interp, self.log,
                                           self.model_identity, self._check_checkpoint_architecture)
        self._identity: dict | None = None
        self.notes: list[str] = []      # said once in the log, repeated under the verdict
        self.baseline_updates: list[tuple[Baseline | None, Baseline]] = []
        self._updated = False
        self._preflight_done = False
        self.started = time.time()
        self.clock = StageClock()  # seconds per stage, for the report's "Time" section (harness/timings.py)
        self.busy = None  # a timings.Busy where the gate shares its process (the pytest plugin): its own wall time
        self.record_recipe = record_recipe
        self._recipe_record: Path | None = None
        self._regression: dict | None = None

    # ---- logging ------------------------------------------------------------
    def log(self, msg: str) -> None:
        self._emit(f"[{time.strftime('%H:%M:%S')}] {msg}")

    def _emit(self, line: str) -> None:
        """A stamped log line (this session's own, or one another process wrote) into the log and out."""
        self.log_lines.append(line)
        if self._external_log:
            self._external_log(line)
        elif not self._quiet:
            print(line, file=sys.stderr, flush=True)

    def _shows_progress(self) -> bool:
        """A progress bar per dataset where a person watches: this process's own terminal, not pytest or a log."""
        return not self._quiet and self._external_log is None and sys.stderr.isatty()

    # ---- data ---------------------------------------------------------------
    @property
    def dataset_names(self) -> list[str]:
        return list(self.cfg.datasets)

    def tokenizer(self):
        if self._tokenizer is None:
            with self.clock("prepare"):
                self._tokenizer = load_tokenizer(self.cfg, self.source)
        return self._tokenizer

    def prepared(self, name: str) -> PreparedDataset:
        if name not in self._prepared:
            with self.clock("prepare"):
                self._prepared[name] = prepare_dataset(self.cfg, name, self.tokenizer(), self.log)
        return self._prepared[name]

    def prepare_all(self) -> Prepared:
        """The prepare stage's result: every dataset of the config (each prepared once per session)."""
        return Prepared({n: self.prepared(n) for n in self.dataset_names})

    # ---- quantization -------------------------------------------------------
    def recipe(self):
        return self.provider.recipe()


    def calibration(self):
        return self.provider.calibration()

    def warm_up_quantization(self) -> bool:
        """Where the provide stage will build: start the quantization interpreter now, so that its import overlaps
        data preparation (preflight calls it once the recipe, the backend's libraries and the report folder passed;
        harness/quant/zygote_client.py; Linux without a GPU only)."""
        return self.provider.warm_up()

    def checkpoint(self, build: bool = True) -> Checkpoint | None:
        """The provide stage's result: the quantized checkpoint (from the cache, built now, or an existing one);
        ``build=False``: None where it would have to be built."""
        with self.clock("quantize"):
            return self.provider.checkpoint(build)

    # ---- scoring ------------------------------------------------------------
    def _engine(self, precision: str):
        from harness.backends import EngineSpec, make_backend

        m = self.cfg.model
        if precision == "bf16":
            model = self.source.path
            if Path(model).is_dir():
                from harness.checkpoint import check_shards

                check_shards(Path(model))
        else:
            model = str(self.checkpoint().path)

        def make():
            spec = EngineSpec(model=model, precision=precision, max_model_len=m.max_model_len,
                              tokenizer=self.source.tokenizer, revision=m.revision if precision == "bf16" else None,
                              engine_kwargs=self.cfg.engine_kwargs(precision, self.backend), batch_size=self.batch_size,
                              top_k=self.top_k, fidelity=self.cfg.fidelity)
            with self.clock("engine_start"):
                eng = make_backend(self.backend, spec)
            self._engine_info[precision] = eng.info()
            if precision != "bf16":
                try:  # the kernel is known once the engine is up: refuse now, not after a dataset is scored
                    check_kernel(self.engine_info(precision), self.cfg.require_kernel)
                except HarnessError:
                    eng.close()
                    raise
            return eng

        return self.engines.get((self.backend, precision, model), make)

    def start_engine(self, precision: str = "nvfp4") -> dict:
        """Start (or keep) the engine for this precision now, e.g. so a benchmark times scoring alone."""
        self._engine(precision)
        return self.engine_info(precision)

    def score(self, name: str, precision: str = "nvfp4") -> DatasetScore:
        key = (name, precision)
        if key not in self._scores:
            if precision != "bf16":
                self.preflight()  # baselines and data checked before any quantization or engine start
            prep = self.prepared(name)
            eng = self._engine(precision)
            self.log(f"scoring {name} ({len(prep.token_ids)} texts, {prep.stats.total_tokens} tokens) "
                     f"with {self.backend}/{precision}")
            calls_back = getattr(eng, "reports_progress", False)
            with self.clock("scoring"), ScoringProgress(f"{name} {precision}", len(prep.token_ids),
                                                        bar=self._shows_progress() and calls_back,
                                                        pulse=self.log if calls_back else None,
                                                        sizes=[len(d) for d in prep.token_ids]) as progress:
                s = score_dataset(eng, prep, top_k=self.top_k, token_detail=self.token_detail, progress=progress)
            self.log(f"{name} {precision}: PPL {s.ppl:.4f} NLL {s.nll:.6f} tokens {s.tokens} in {s.eval_s:.1f}s")
            self._scores[key] = s
        return self._scores[key]

    def scores(self, precision: str = "nvfp4") -> Scores:
        """The score stage's result: every dataset scored at this precision (each once per session)."""
        datasets = {n: self.score(n, precision) for n in self.dataset_names}
        return Scores(precision, datasets, self.engine_info(precision))

    def scored(self, name: str, precision: str = "nvfp4") -> bool:
        """Whether this dataset has been scored at this precision in this session."""
        return (name, precision) in self._scores

    def preflight(self, report_dir: Path | None = None, baselines: bool = True) -> None:
        """Before any quantization or engine start of a gate, everything that needs no GPU: the backend's libraries,
        where the report goes, every dataset prepared (its stats checked) with its baseline present, made from the
        same data and the same model, its side files intact, and a recipe vLLM can run. Each fault found here costs
        seconds, not an hour of quantization or an engine start. ``baselines=False``: another session of this run
        writes them first (pytest --update-baselines serves every recipe with one update), so they are checked later."""
        if self._preflight_done:
            return
        from harness.stages.preflight import check_backend_installed, check_writable_dir

        self.check_task_backend()

        if not self.existing:  # the recipe first (its threshold keys; a scheme the backend runs): the input's
            self.recipe()      # faults before the environment's
            from harness.backends import backend_spec, load_class

            refuse = backend_spec(self.backend).refuse_scheme
            why = load_class(refuse)(self.recipe().scheme) if refuse else None
            if why:
                raise ConfigError(scheme_refusal(self.cfg, self.backend, self.recipe_name, self.recipe().scheme, why))
        check_backend_installed(self.backend)
        if report_dir is not None:
            check_writable_dir(report_dir, "report folder", "pick another with --report-dir (pytest: "
                                                            "--harness-report-dir) or reports_dir in the config")
        self.check_data_files()
        self.warm_up_quantization()  # the input and environment pass so far: llm-compressor imports while data loads
        for t in self.task_names:  # every task's rows read and checked (file:line) before any engine starts
            self.task_items(t)
        if baselines and not self.update_mode:
            for n in self.dataset_names:
                self.baseline(n)
            for t in self.task_names:
                self.task_baseline(t)
            for note in self.task_sizing_notes():
                self._note_once(note)
        rr = self.cfg.recipe_regression
        if rr is not None and not (self.record_recipe and self.recipe_name == rr.best):  # stored in this run
            from harness.recipes.records import load_record, record_hint

            load_record(self.cfg.path_of("baselines_dir"), self.cfg.name, rr.best, record_hint(self.cfg, rr.best))
        self._preflight_done = baselines or self.update_mode

    def check_data_files(self) -> None:
        """Every local file the datasets read: there, not empty, parseable (a malformed JSON line by file:line),
        before anything is quantized or started and before the data is prepared (beside the engine's start it is
        prepared in another process, after the start has begun). The calibration's files are checked where a build
        is due, before its interpreter starts (stages/provide.py)."""
        from harness.data.files import check_data_files, local_data_files

        for n in self.dataset_names:
            s = self.cfg.datasets[n].source
            check_data_files(local_data_files(self.cfg.resolve(s.path), s.split, self.cfg.resolve_files(s.data_files)))

    def start_beside_prepare(self, report_dir: Path | None = None) -> bool:
        """A gate whose checkpoint is ready (cached, or an existing one) starts its engine while its data is prepared
        in a process of its own (harness/stages/prepare_ahead.py), then checks the data against the baselines (preflight)
        before anything is scored: a mismatch closes the engine and stops the gate as before. Everything else is
        checked first: the recipe, the backend's libraries, the report folder, each baseline's file, model and
        distributions. False, with nothing started, where it does not apply: prepare_beside_engine false; unset and
        the backend needs a GPU (on the H200 vLLM's start slowed by about what the overlap saved, docs/results), one
        CPU core, or transformers already loaded here (preparing here is then quick); a baseline update; data already
        prepared; a checkpoint still to build."""
        import os

        from harness.backends import backend_spec

        want = self.cfg.prepare_beside_engine
        if want is None:  # a fresh CPU gate on 2+ cores: the other imports the tokenizer's library while this starts
            want = (not backend_spec(self.backend).needs_gpu and (os.cpu_count() or 1) >= 2
                    and "transformers" not in sys.modules)  # loaded: preparing here is quick
        if self.update_mode or self._prepared or self._preflight_done or not want:
            return False
        self.preflight(report_dir, baselines=False)
        for n in self.dataset_names:  # present, readable, of this model, with its distributions: before any start
            self.check_stored(self.store.load(self.cfg.name, n))
        for t in self.task_names:  # the task's rows and its baseline's file (its items are checked once tokenized)
            self.task_items(t)
            self.task_baseline(t, check_items=False)
        if self.checkpoint(build=False) is None:
            return False
        from harness.stages.prepare_ahead import PrepareAhead

        ahead = PrepareAhead(self.cfg, self.dataset_names)
        self.log(f"preparing the data in process {ahead.pid} while the engine starts")
        try:
            self._engine("nvfp4")
        except BaseException:
            ahead.close()
            raise
        try:
            with self.clock("prepare"):  # what the engine start did not cover
                prepared, lines, seconds = ahead.result()
        except BaseException as e:  # its error (or an interrupt while waiting): the engine goes too
            self.log_lines.extend(getattr(e, "child_log", []))
            self.close()
            raise
        for ln in lines:
            self._emit(ln)
        self._prepared.update(prepared)
        self.clock.beside("prepare", seconds, "engine_start")
        try:
            self.preflight(report_dir)  # the data against the baselines, now that it is here
        except HarnessError:
            self.close()
            raise
        return True

    def engine_info(self, precision: str) -> dict:
        return self._engine_info.get(precision, {})


    def time_breakdown(self) -> dict:
        """Seconds per stage so far and the wall time since the session began, or the time it was busy where it
        shares its process (harness/timings.py)."""
        return self.clock.breakdown(self.busy() if self.busy is not None else time.time() - self.started)

    def close(self) -> None:
        self.engines.close()


def default_update_hint(cfg: HarnessConfig) -> str:
    """The command that creates or updates this config's baselines, as a missing or stale baseline's error names it."""
    src = cfg.source_path or "configs/tiny.yaml"
    if cfg.fallback_baselines_dir:  # the shipped default, run in a user's project: no path to spell out
        return "harness baseline update   (or: pytest --harness-gate-tests yes --update-baselines)"
    return f"pytest --harness-config {src} --update-baselines   (or: harness baseline update --config {src})"
