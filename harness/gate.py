"""The gate's workflow, shared by the pytest plugin and the CLI.

prepare data -> (update mode: score BF16, write baselines) -> check data against baselines -> quantize (cached)
-> score the quantized model -> compare -> verdict -> report. The normal gate never starts a BF16 engine, and only
one engine is alive at a time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.baselines import Baseline, BaselineStore, baseline_from_score, check_data_matches
from harness.config import HarnessConfig
from harness.data import PreparedDataset
from harness.engines import EngineManager
from harness.errors import BaselineError, ConfigError, HarnessError
from harness.judge import Outcome, Verdict, dataset_comparison, judge, overall_comparison, threshold_source
from harness.metrics import Comparison, DatasetScore
from harness.prepare import load_tokenizer, prepare_dataset
from harness.provide import CheckpointProvider
from harness.timings import StageClock


EXISTING = "checkpoint"  # the recipe label of a run that gates an existing checkpoint


class GateSession:
    def __init__(self, cfg: HarnessConfig, *, backend: str | None = None, min_score: float | None = None,
                 update_baselines: bool = False, force: bool = False, recipe: str | None = None,
                 quant_python: str | None = None, quant_pythonpath: str | None = None, batch_size: int | None = None,
                 update_hint: str | None = None, log=None, quiet: bool = False, token_detail: bool = False,
                 distributions: bool = True, record_recipe: bool = False):
        from harness.config import apply_hub_environment
        from harness.quantize import QuantInterpreter

        apply_hub_environment(cfg.hub.environment(cfg.resolve_local))
        self.cfg = cfg
        self.backend = backend or cfg.backend
        self.min_score = min_score
        self.update_mode = update_baselines
        self.force = force
        self.existing = cfg.model.checkpoint  # gate this quantized checkpoint as it is
        if self.existing and recipe and recipe != EXISTING:
            from harness.errors import ConfigError

            raise ConfigError(f"--recipe {recipe}: the config gates an existing checkpoint ({self.existing}), which "
                              "is not quantized here; drop --recipe or model.checkpoint")
        self.recipe_name = EXISTING if self.existing else (recipe or cfg.recipe)
        self.batch_size = batch_size or cfg.batch_size
        self.token_detail = token_detail or cfg.token_detail
        # 0: no next-token distributions (config off, or a caller that only wants PPL: `harness score`)
        self.top_k = cfg.distributions.top_k if cfg.distributions and distributions else 0
        self.interp = QuantInterpreter.from_env(quant_python or cfg.quantize.python,
                                                quant_pythonpath if quant_pythonpath is not None else cfg.quantize.pythonpath)
        check_model_path(cfg)
        src = cfg.source_path or "configs/tiny.yaml"
        if cfg.fallback_baselines_dir:  # the shipped default, run in a user's project: no path to spell out
            hint = "harness baseline update   (or: pytest --harness-gate-tests yes --update-baselines)"
        else:
            hint = f"pytest --harness-config {src} --update-baselines   (or: harness baseline update --config {src})"
        self.update_hint = update_hint or hint
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
        self.provider = CheckpointProvider(cfg, self.recipe_name, self.existing, self.interp, self.log,
                                           self.model_identity, self._check_checkpoint_architecture)
        self._identity: dict | None = None
        self.notes: list[str] = []      # said once in the log, repeated under the verdict
        self.baseline_updates: list[tuple[Baseline | None, Baseline]] = []
        self._updated = False
        self._preflight_done = False
        self.started = time.time()
        self.clock = StageClock()  # seconds per stage, for the report's "Time" section (harness/timings.py)
        self.record_recipe = record_recipe
        self._recipe_record: Path | None = None
        self._regression: dict | None = None

    # ---- logging ------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
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
                self._tokenizer = load_tokenizer(self.cfg)
        return self._tokenizer

    def prepared(self, name: str) -> PreparedDataset:
        if name not in self._prepared:
            with self.clock("prepare"):
                self._prepared[name] = prepare_dataset(self.cfg, name, self.tokenizer(), self.log)
        return self._prepared[name]

    # ---- quantization -------------------------------------------------------
    def recipe(self):
        return self.provider.recipe()

    def calibration(self):
        return self.provider.calibration()

    def checkpoint(self) -> tuple[Path, dict]:
        """The quantized checkpoint (from the cache, or built now); returns (path, info with cache_hit)."""
        with self.clock("quantize"):
            return self.provider.checkpoint()

    # ---- scoring ------------------------------------------------------------
    def _engine(self, precision: str):
        from harness.backends import EngineSpec, make_backend

        m = self.cfg.model
        if precision == "bf16":
            model = self.cfg.resolve(m.path)
            if Path(model).is_dir():
                from harness.checkpoint import check_shards

                check_shards(Path(model))
        else:
            model = str(self.checkpoint()[0])

        def make():
            spec = EngineSpec(model=model, precision=precision, max_model_len=m.max_model_len,
                              tokenizer=self.cfg.resolve(m.tokenizer), revision=m.revision if precision == "bf16" else None,
                              engine_kwargs=self.cfg.engine_kwargs(precision, self.backend), batch_size=self.batch_size,
                              top_k=self.top_k, fidelity=self.cfg.fidelity)
            with self.clock("engine_start"):
                eng = make_backend(self.backend, spec)
            self._engine_info[precision] = eng.info()
            if precision != "bf16":
                try:  # the kernel is known once the engine is up: refuse now, not after a dataset is scored
                    self._check_kernel(precision)
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
            t0 = time.time()
            show = self._shows_progress() and getattr(eng, "reports_progress", False)
            with self.clock("scoring"), ScoringProgress(f"{name} {precision}", len(prep.token_ids),
                                                        enabled=show) as progress:
                res = eng.loglikelihood_rolling(prep.token_ids, progress=progress, token_logprobs=self.token_detail,
                                                top_k=self.top_k)
                topk = None
                if self.top_k:
                    from harness.distributions import from_results

                    topk = from_results(res, prep.token_ids, self.top_k, self.backend)
            s = DatasetScore(nll_sums=[r.nll_sum for r in res], n_tokens=[r.n_tokens for r in res],
                             eval_s=time.time() - t0, words=prep.words, bytes=prep.bytes,
                             token_logprobs=[r.token_logprobs for r in res] if self.token_detail else None, topk=topk)
            self.log(f"{name} {precision}: PPL {s.ppl:.4f} NLL {s.nll:.6f} tokens {s.tokens} in {s.eval_s:.1f}s")
            self._scores[key] = s
        return self._scores[key]

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
        from harness.preflight import check_backend_installed, check_writable_dir

        if not self.existing:  # the recipe first (its threshold keys; a scheme the backend runs): the input's
            self.recipe()      # faults before the environment's
            from harness.backends import backend_spec, load_class

            refuse = backend_spec(self.backend).refuse_scheme
            why = load_class(refuse)(self.recipe().scheme) if refuse else None
            if why:
                raise ConfigError(f"recipe {self.recipe_name}: scheme {self.recipe().scheme}: {why}; nothing was "
                                  "quantized. Gate it with --backend hf (transformers runs it as fake "
                                  "quantization), or pick a recipe vLLM runs (nvfp4, nvfp4a16, "
                                  "negative-control-nvfp4-pruned)")
        check_backend_installed(self.backend)
        if report_dir is not None:
            check_writable_dir(report_dir, "report folder", "pick another with --report-dir (pytest: "
                                                            "--harness-report-dir) or reports_dir in the config")
        if baselines and not self.update_mode:
            for n in self.dataset_names:
                self.baseline(n)
        rr = self.cfg.recipe_regression
        if rr is not None and not (self.record_recipe and self.recipe_name == rr.best):  # stored in this run
            from harness.recipe_records import load_record, record_hint

            load_record(self.cfg.path_of("baselines_dir"), self.cfg.name, rr.best, record_hint(self.cfg, rr.best))
        self._preflight_done = baselines or self.update_mode

    def engine_info(self, precision: str) -> dict:
        return self._engine_info.get(precision, {})

    def _check_kernel(self, precision: str) -> None:
        info = self.engine_info(precision)
        want = self.cfg.require_kernel
        got = info.get("kernel", "?")
        chose = (info.get("fidelity") or {}).get("set_by") == "fidelity: scheme"
        if chose and "emulation" not in got:  # the harness asked for W4A4 emulation and vLLM ran something else
            raise HarnessError(f"fidelity: scheme started the NVFP4 engine with linear_backend: emulation, but vLLM ran "
                               f"{got!r}: this vLLM ignores the setting. Set fidelity: this-gpu to gate what it runs, "
                               "or use a vLLM that has the W4A4 emulation backend")
        if want and want.lower() not in got.lower():
            raise HarnessError(f"config requires NVFP4 kernel {want!r} but this run used {got!r}; on Hopper W4A4 "
                               "needs fidelity: scheme (the default: vLLM's emulation), or drop require_kernel")

    # ---- model identity ------------------------------------------------------
    def model_identity(self) -> dict:
        """Which BF16 model this config names: local content, or hub id + resolved commit (computed once)."""
        if self._identity is None:
            from harness import identity

            m = self.cfg.model
            self._identity = identity.model_identity(self.cfg.locate(m.path), m.revision, named=m.path)
            if self._identity["kind"] == "hub" and not self._identity["pinned"]:
                got = self._identity["resolved"]
                self.log(f"warning: model.revision is not pinned: {m.path}@{m.revision or 'main'} "
                         + (f"resolved to {got}" if got else f"is {self._identity['resolved_by']}")
                         + "; pin model.revision to a commit sha for a reproducible gate")
        return self._identity

    def check_identity(self, b: Baseline) -> None:
        """Refuse a baseline scored on another model (content, commit, architecture) or in another dtype."""
        from harness import identity

        where = self.store.path(self.cfg.name, b.dataset)
        theirs = b.provenance.get("model_identity")
        if not theirs:
            self._note_once(f"{b.dataset}: baseline records no model identity (made before it was recorded); "
                            f"rebuild it to pin the model: {self.update_hint}")
            return
        dtype_c = self.cfg.engine_kwargs("bf16", b.provenance.get("backend") or self.backend).get("dtype")
        why = identity.baseline_mismatches(theirs, self.model_identity(), b.provenance.get("dtype"), dtype_c)
        if why:
            raise BaselineError(f"{where}: scored on another model than this config's ({'; '.join(why)}).\n"
                                f"  baseline: {identity.describe(theirs)}\n  config:   "
                                f"{identity.describe(self.model_identity())}\n  rebuild it with: {self.update_hint}")

    def _check_checkpoint_architecture(self, path: str) -> None:
        """An existing checkpoint must be a quantization of this config's model (and of the baselines' model)."""
        from harness import identity

        if not Path(path).is_dir():
            return  # a hub id: its config.json is read by the engine
        sources = [("model.path " + self.cfg.model.path, self.model_identity())]
        for n in self.dataset_names:
            if self.store.exists(self.cfg.name, n):
                try:
                    ident = self.store.load(self.cfg.name, n).provenance.get("model_identity")
                except BaselineError:
                    continue
                if ident:
                    sources.append((f"the baseline's model ({n})", ident))
        bad = identity.checkpoint_mismatch(Path(path), sources)
        if bad:
            what, why = bad
            raise HarnessError(f"model.checkpoint {self.existing} is not a quantization of {what}: "
                               f"{'; '.join(why)} (theirs vs the checkpoint's config.json). Point model.checkpoint "
                               "at a checkpoint of this model, or model.path at its BF16 model.")

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
            self.log(f"note: {note}")

    # ---- baselines ----------------------------------------------------------
    def baseline(self, name: str) -> Baseline:
        if self.update_mode and not self._updated:
            self.update_baselines()
        b = self.store.load(self.cfg.name, name)
        check_data_matches(b, self.prepared(name), where=f"{self.store.path(self.cfg.name, name)}")
        self.check_identity(b)
        self._check_distributions(b)
        return b

    def _check_distributions(self, b: Baseline) -> None:
        """With distributions on, the baseline must carry BF16's top-k at this config's k (checked before any
        quantization or engine start, like the data)."""
        if not self.top_k:
            return
        where = self.store.path(self.cfg.name, b.dataset)
        if not b.distributions:
            raise BaselineError(f"{where}: the config compares next-token distributions (distributions.top_k "
                                f"{self.top_k}) but this baseline stores none (made without them); add them with: "
                                f"{self.update_hint}")
        if b.distributions.get("top_k") != self.top_k:
            raise BaselineError(f"{where}: stores BF16's top-{b.distributions.get('top_k')}, the config asks for top-"
                                f"{self.top_k}: compare at the same k (set distributions.top_k: "
                                f"{b.distributions.get('top_k')}) or re-create it with: {self.update_hint}")
        from harness.distributions import verify

        verify(self.store.distributions_path(b), b.distributions, self.update_hint)

    def update_baselines(self, names: list[str] | None = None) -> list[tuple[Baseline | None, Baseline]]:
        """Score BF16 on every dataset with one engine, then write all baselines (refusing fingerprint changes)."""
        names = names or self.dataset_names
        olds = {n: self._old_baseline(n) for n in names}  # a changed fingerprint is refused before any scoring
        new: list[Baseline] = []
        for n in names:
            prep = self.prepared(n)
            s = self.score(n, "bf16")
            new.append(self.make_baseline(n, prep, s))
        self.engines.close()
        pairs = [(olds[b.dataset], b) for b in new]
        for _, b in pairs:
            topk = self._scores[(b.dataset, "bf16")].topk
            if topk is not None:  # the distributions file first: the baseline written next records its sha256
                from harness.distributions import SUFFIX, save

                b.distributions = save(self.store.own_path(b.model, b.dataset, SUFFIX), topk)
                self.log(f"wrote BF16 top-{topk.k} distributions {b.distributions['file']} "
                         f"({b.distributions['bytes'] / 2**20:.1f} MiB, {topk.tokens} tokens)")
            p = self.store.write(b)
            self.log(f"wrote baseline {p}")
            tok = self._scores[(b.dataset, "bf16")].token_logprobs
            if tok is not None:
                from harness.token_detail import save_tokens

                save_tokens(self.store.own_path(b.model, b.dataset, ".tokens.npz"), tok)
        self.baseline_updates = pairs
        self._updated = True
        return pairs

    def _old_baseline(self, name: str) -> Baseline | None:
        """The stored baseline an update replaces; a different data fingerprint needs --force."""
        if not self.store.exists(self.cfg.name, name):
            return None
        try:
            old = self.store.load(self.cfg.name, name)
        except BaselineError as e:
            self.log(f"replacing unreadable baseline: {e}")
            return None
        fp = self.prepared(name).fingerprint
        if old.fingerprint != fp and not self.force:
            raise BaselineError(
                f"{self.store.path(self.cfg.name, name)}: data fingerprint changed {old.fingerprint} -> {fp} "
                "(tokenizer, dataset revision or rules differ); nothing was scored or written. Re-run with --force "
                "to accept the new data.")
        return old

    def make_baseline(self, name: str, prep: PreparedDataset, s: DatasetScore) -> Baseline:
        info = self.engine_info("bf16")
        m = self.cfg.model
        prov = {"backend": self.backend, "device": info.get("device"), "versions": info.get("versions", {}),
                "dtype": info.get("dtype"), "kernel": info.get("kernel"), "max_model_len": m.max_model_len,
                "engine_kwargs": info.get("engine_kwargs"), "engine_start_s": info.get("engine_start_s"),
                "compilation": info.get("compilation"),
                "engine_start": info.get("engine_start"), "offload": _offload_summary(info.get("offload")),
                "model_path": m.path, "revision": m.revision, "model_identity": self.model_identity(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "git_commit": git_commit(self.cfg.root), "eval_s": round(s.eval_s or 0, 3)}
        return baseline_from_score(self.cfg.name, name, prep, s, prov)

    # ---- comparison ---------------------------------------------------------
    def comparison(self, name: str) -> Comparison:
        if name not in self._comparisons:  # scores and baselines are fixed once computed: bootstrap once
            with self.clock("judging"):
                self._comparisons[name] = self._compare(name)
        return self._comparisons[name]

    def _compare(self, name: str) -> Comparison:
        return dataset_comparison(name, self.baseline(name), self.score(name), self.cfg.thresholds)

    def overall(self) -> Comparison:
        if None not in self._comparisons:
            with self.clock("judging"):
                self._comparisons[None] = self._compare_overall()
        return self._comparisons[None]

    def _compare_overall(self) -> Comparison:
        names = self.dataset_names
        return overall_comparison({n: self.baseline(n) for n in names}, {n: self.score(n) for n in names},
                                  self.cfg.thresholds)

    def token_summary(self, name: str) -> dict | None:
        """BF16-vs-quantized per-token summary, when both sides have per-token logprobs."""
        s = self.score(name)
        if s.token_logprobs is None:
            return None
        bf16 = self.store.tokens_path(self.cfg.name, name)
        if not bf16.exists():
            return {"note": f"no BF16 per-token file {bf16}: run a baseline update with token_detail on"}
        from harness.token_detail import load_tokens, summarize, to_arrays

        return summarize(load_tokens(bf16), to_arrays(s.token_logprobs))

    # ---- next-token distributions ------------------------------------------
    def token_metrics(self, name: str):
        """Per-token KL, top-1 agreement and Δp of the quantized run against the stored BF16 distributions."""
        if name not in self._token_metrics:
            from harness.distributions import load
            from harness.divergence import token_metrics

            b = self.baseline(name)
            ref = load(self.store.distributions_path(b), b.distributions, self.update_hint)
            self._token_metrics[name] = token_metrics(ref, self.score(name).topk)
        return self._token_metrics[name]

    def distribution_stats(self, name: str | None) -> dict | None:
        """divergence.describe of one dataset (``None``: all datasets pooled); None with distributions off."""
        if not self.top_k:
            return None
        if name not in self._distribution_stats:
            from harness.divergence import describe

            t = self.cfg.thresholds
            names = self.dataset_names if name is None else [name]
            with self.clock("judging"):
                self._distribution_stats[name] = describe({n: self.token_metrics(n) for n in names},
                                                          samples=t.bootstrap_samples, confidence=t.confidence,
                                                          seed=t.seed)
        return self._distribution_stats[name]

    def limit_outcomes(self, name: str | None) -> list:
        """The distribution limits (kld_mean_max, top1_min) that apply, judged for a dataset or (``None``) overall."""
        from harness.judge import LIMITS, judge_limit, limit_source

        stats = self.distribution_stats(name)
        if stats is None:
            return []
        rt = {} if self.existing else self.recipe().thresholds
        out = []
        for key in LIMITS:
            limit, source = limit_source(key, self.cfg.thresholds, rt, self.recipe_name)
            if limit is not None:
                out.append(judge_limit(name or "overall", stats, key, limit, source, self.cfg.thresholds.use))
        return out

    def threshold(self, name: str | None) -> float:
        return self.threshold_source(name)[0]

    def threshold_source(self, name: str | None) -> tuple[float, str]:
        """The minimum score for a dataset (``None``: overall) and where it came from (judge.threshold_source)."""
        rt = {} if self.existing else self.recipe().thresholds
        return threshold_source(name, self.cfg.thresholds, rt, self.min_score, self.recipe_name)

    def outcome(self, name: str | None) -> Outcome:
        c = self.overall() if name is None else self.comparison(name)
        return judge(c, *self.threshold_source(name), self.cfg.thresholds.use)

    def recipe_record(self) -> Path | None:
        """With record_recipe, once every dataset is scored: this run's recipe result, written (once) where
        recipe_regression reads it."""
        if self.record_recipe and self._recipe_record is None and all(self.scored(n) for n in self.dataset_names):
            from harness import recipe_records

            self._recipe_record = recipe_records.write_record(self.cfg.path_of("baselines_dir"),
                                                              recipe_records.make_record(self))
            self.log(f"recipe result stored: {self._recipe_record}")
        return self._recipe_record

    def recipe_regression(self) -> dict | None:
        """This recipe against the stored result of the config's best recipe (None when not configured)."""
        if self.cfg.recipe_regression is not None and self._regression is None:
            from harness import recipe_records

            self.recipe_record()  # recording the best recipe itself: it is checked against what this run measured
            with self.clock("judging"):
                self._regression = recipe_records.regression(self)
        return self._regression

    def verdict(self) -> Verdict:
        with self.clock("judging"):
            return self._verdict()

    def time_breakdown(self) -> dict:
        """Seconds per stage so far and the wall time since the session began (harness/timings.py)."""
        return self.clock.breakdown(time.time() - self.started)

    def _verdict(self) -> Verdict:
        outs = [self.outcome(n) for n in self.dataset_names] + [self.outcome(None)]
        outs += [o for n in [*self.dataset_names, None] for o in self.limit_outcomes(n)]
        if self.cfg.recipe_regression is not None:
            from harness.recipe_records import RegressionOutcome

            outs.append(RegressionOutcome(self.recipe_name, self.recipe_regression()))
        notes = list(self.notes)
        mine = self.engine_info("nvfp4")
        from harness import fidelity

        said = fidelity.note(mine.get("fidelity"), mine.get("kernel") or "?")
        if said:
            notes.append(said)
        for n in self.dataset_names:
            b = self.store.load(self.cfg.name, n)
            if not b.has_documents:
                notes.append(f"{n}: baseline has no per-document NLLs: point estimate only, no confidence interval")
            said = fidelity.mode_note(n, b.provenance.get("compilation"), mine.get("compilation"))
            if said:
                notes.append(said)
            theirs = (b.provenance.get("backend"), b.provenance.get("device"))
            if mine and theirs != (self.backend, mine.get("device")):
                notes.append(f"{n}: baseline scored with {theirs[0]} on {theirs[1]}, this run with {self.backend} on "
                             f"{mine.get('device')}: backends agree to ~0.1% PPL; update the baseline on this setup "
                             "for the tightest gate")
        return Verdict(outs, notes)

    def close(self) -> None:
        self.engines.close()


class ScoringProgress:
    """The backends' ``progress(done, total)`` callback as one tqdm bar over a dataset's texts, shown from the
    start (only for backends that call back: vLLM scoring all texts at once draws its own bar)."""

    def __init__(self, desc: str, total: int, enabled: bool, file=None):
        self.desc, self.total, self.enabled, self.file, self.bar = desc, total, enabled, file, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> "ScoringProgress":
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=f"scoring {self.desc}", unit="text", leave=False,
                            file=self.file or sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def check_model_path(cfg: HarnessConfig) -> None:
    """A local model path that does not exist is a config error now, not a loader traceback later."""
    from harness.errors import ConfigError

    for key in ("path", "checkpoint", "tokenizer"):
        raw = getattr(cfg.model, key)
        if raw and "$" in (cfg.resolve(raw) or ""):
            raise ConfigError(f"model.{key} {raw!r}: an environment variable in it is not set; set it (e.g. "
                              "export HARNESS_SYNTH_DIR=/dev/shm/synth) or write the path out")
    for key in ("path", "checkpoint"):
        raw = getattr(cfg.model, key)
        loc = cfg.locate(raw) if raw else None
        if loc and loc.is_local and not Path(loc.path).exists():
            raise ConfigError(f"model.{key} {raw!r} does not exist ({loc.path}); give a local checkpoint dir or a hub "
                              "id such as Qwen/Qwen2.5-7B-Instruct")


def _offload_summary(offload: dict | None) -> dict | None:
    """The offload facts worth keeping in a baseline's provenance (it changes speed, not numbers)."""
    if not offload:
        return None
    return {"requested": offload.get("requested"), "offloader": offload.get("offloader"),
            "offloaded_gib": offload.get("offloaded_gib")}


def git_commit(root: str | None) -> str | None:
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root or ".", capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
