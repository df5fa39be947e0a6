"""The gate's workflow, shared by the pytest plugin and the CLI.

prepare data -> (update mode: score BF16, write baselines) -> check data against baselines -> quantize (cached)
-> score the quantized model -> compare -> verdict -> report. The normal gate never starts a BF16 engine, and only
one engine is alive at a time.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.baselines import Baseline, BaselineStore, check_data_matches
from harness.config import HarnessConfig
from harness.data import PreparedDataset, TokenRules, load_rows, prepare_texts, select_texts
from harness.errors import BaselineError, HarnessError, unknown_name
from harness.metrics import Comparison, DatasetScore, compare, overall_nll, paired_bootstrap


EXISTING = "checkpoint"  # the recipe label of a run that gates an existing checkpoint


class EngineManager:
    """Holds at most one scoring engine; asking for another closes (and frees) the current one first.

    The rule holds across managers too (one per GateSession): a manager that starts an engine first closes the
    engine of whichever manager holds one, so a process never has two engines on the GPU.
    """

    _holder: "EngineManager | None" = None  # the manager whose engine is alive, process-wide

    def __init__(self, log=print):
        self.current = None
        self.key: tuple | None = None
        self.log = log
        self.opened: list[tuple] = []   # history, so tests can check which engines a run started

    def get(self, key: tuple, make):
        if self.key == key and self.current is not None:
            return self.current
        self.close()
        other = EngineManager._holder
        if other is not None and other is not self:
            other.close()
        self.log(f"starting engine {key}")
        self.current = make()
        self.key = key
        self.opened.append(key)
        EngineManager._holder = self
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.log(f"closing engine {self.key}")
            try:
                self.current.close()
            finally:
                self.current, self.key = None, None
                if EngineManager._holder is self:
                    EngineManager._holder = None


@dataclass
class Outcome:
    name: str
    comparison: Comparison
    threshold: float
    gated_value: float
    passed: bool
    threshold_source: str = "config"

    def message(self) -> str:
        c = self.comparison
        basis = "score" if c.interval is None or self.gated_value == c.score else "score lower bound"
        ci = f" [{c.interval.confidence:.0%} CI {c.interval.low:.2f}..{c.interval.high:.2f}]" if c.interval else ""
        verdict = "ok  " if self.passed else "FAIL"
        rel = ">=" if self.passed else "<"
        return (f"{verdict} {self.name}: {basis} {self.gated_value:.2f} {rel} min {self.threshold:.2f} "
                f"({self.threshold_source}){ci} (PPL {c.ppl_model:.4f} vs BF16 {c.ppl_ref:.4f})")


@dataclass
class Verdict:
    outcomes: list[Outcome]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    def summary(self) -> str:
        head = "GATE PASSED" if self.passed else "GATE FAILED"
        return "\n".join([head] + [o.message() for o in self.outcomes] + [f"note: {n}" for n in self.notes])


class GateSession:
    def __init__(self, cfg: HarnessConfig, *, backend: str | None = None, min_score: float | None = None,
                 update_baselines: bool = False, force: bool = False, recipe: str | None = None,
                 quant_python: str | None = None, quant_pythonpath: str | None = None, batch_size: int | None = None,
                 update_hint: str | None = None, log=None, quiet: bool = False, token_detail: bool = False):
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
        self.interp = QuantInterpreter.from_env(quant_python or cfg.quantize.python,
                                                quant_pythonpath if quant_pythonpath is not None else cfg.quantize.pythonpath)
        check_model_path(cfg)
        src = cfg.source_path or "configs/tiny.yaml"
        self.update_hint = update_hint or (f"pytest --harness-config {src} --update-baselines   "
                                           f"(or: harness baseline update --config {src})")
        self.store = BaselineStore(cfg.path_of("baselines_dir"), self.update_hint, cfg.fallback_baselines_dir)
        self.log_lines: list[str] = []
        self._quiet = quiet
        self._external_log = log
        self.engines = EngineManager(self.log)
        self._tokenizer = None
        self._prepared: dict[str, PreparedDataset] = {}
        self._scores: dict[tuple[str, str], DatasetScore] = {}
        self._engine_info: dict[str, dict] = {}
        self._checkpoint: tuple[Path, dict] | None = None
        self._comparisons: dict[str | None, Comparison] = {}
        self._recipe = None
        self._identity: dict | None = None
        self.notes: list[str] = []      # said once in the log, repeated under the verdict
        self.baseline_updates: list[tuple[Baseline | None, Baseline]] = []
        self._updated = False
        self._preflight_done = False
        self.started = time.time()

    # ---- logging ------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.log_lines.append(line)
        if self._external_log:
            self._external_log(line)
        elif not self._quiet:
            print(line, file=sys.stderr, flush=True)

    # ---- data ---------------------------------------------------------------
    @property
    def dataset_names(self) -> list[str]:
        return list(self.cfg.datasets)

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            m = self.cfg.model
            path = self.cfg.resolve(m.tokenizer or m.path)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(path, revision=m.revision,
                                                                trust_remote_code=m.trust_remote_code)
            except (OSError, ValueError) as e:
                raise HarnessError(f"cannot load tokenizer {path!r}: {str(e)[:300]}\n  hint: check model.path / "
                                   "model.tokenizer; offline runs need a local dir or a warm HF cache") from None
        return self._tokenizer

    def prepared(self, name: str) -> PreparedDataset:
        if name not in self._prepared:
            if name not in self.cfg.datasets:
                raise unknown_name("dataset", name, self.cfg.datasets)
            d = self.cfg.datasets[name]
            s = d.source
            path = self.cfg.resolve(s.path)  # a local copy, a builder name ("parquet") or a hub dataset id
            rows = load_rows(path, split=s.split, name=s.name, revision=s.revision,
                             data_files=self.cfg.resolve_files(s.data_files))
            texts = select_texts(d.rule, rows, d.n_texts)
            rules = TokenRules(n_texts=d.n_texts, max_model_len=self.cfg.model.max_model_len, min_tokens=d.min_tokens,
                               truncation_margin=d.truncation_margin,
                               add_special_tokens=self.cfg.model.add_special_tokens)
            source = {"path": s.path, "name": s.name, "split": s.split, "revision": s.revision}
            p = prepare_texts(name, d.rule, texts, self.tokenizer(), rules, source=source)
            st = p.stats
            self.log(f"{name}: {st.kept_texts} texts kept of {st.selected} selected ({st.requested} requested), "
                     f"{st.dropped_short} dropped < {d.min_tokens} tokens, {st.truncated} truncated, "
                     f"{st.tokens} scored tokens, fingerprint {p.fingerprint}")
            if st.selected < st.requested:
                self.log(f"warning: {name}: the source has only {st.selected} usable texts, {st.requested} requested")
            if st.kept_texts < d.min_kept_texts:
                raise HarnessError(f"{name}: only {st.kept_texts} texts survive the rules ({st.selected} selected, "
                                   f"{st.dropped_short} under {d.min_tokens} tokens); min_kept_texts is "
                                   f"{d.min_kept_texts}. Raise n_texts or check the data source.")
            self._prepared[name] = p
        return self._prepared[name]

    # ---- quantization -------------------------------------------------------
    def recipe(self):
        if self._recipe is None:
            from harness.recipes import load_recipe

            r = load_recipe(self.cfg.path_of("recipes_dir"), self.recipe_name)
            bad = sorted(k for k in r.thresholds if k != "overall" and k not in self.cfg.datasets)
            if bad:
                raise unknown_name(f"threshold key in recipe {r.name}", bad[0], ["overall", *self.cfg.datasets])
            self._recipe = r
        return self._recipe

    def calibration(self):
        from harness.config import CalibrationSpec

        merged = {**self.recipe().calibration.model_dump(), **self.cfg.calibration}
        try:
            cal = CalibrationSpec.model_validate(merged)
        except Exception as e:  # pydantic ValidationError
            raise HarnessError(f"calibration override in {self.cfg.source_path}: {e}") from None
        cal.data_files = self.cfg.resolve_files(cal.data_files)
        return cal

    def checkpoint(self) -> tuple[Path, dict]:
        """The quantized checkpoint (from the cache, or built now); returns (path, info with cache_hit)."""
        if self._checkpoint is None and self.existing:
            from harness.checkpoint import existing_checkpoint

            path = self.cfg.resolve(self.existing)
            info = {"cache_hit": None, "recipe": None, "quantize_s": None, **existing_checkpoint(path)}
            self._check_checkpoint_architecture(path)
            self.log(f"gating the existing checkpoint {path} (scheme {info['scheme']}); no quantization")
            self._checkpoint = (Path(path), info)
        if self._checkpoint is None:
            from harness import quantize as q
            from harness.checkpoint import check_shards, require_scheme
            from harness.ckpt_cache import CheckpointCache, cache_key, interpreter_versions

            from harness import identity

            recipe = self.recipe()
            cal = self.calibration()
            m = self.cfg.model
            model_path = self.cfg.resolve(m.path)
            if Path(model_path).is_dir():
                check_shards(Path(model_path))
            cache = CheckpointCache(self.cfg.cache_path(), lock_timeout_s=self.cfg.quantize.lock_timeout_s)
            model_key = {**identity.key(self.model_identity()), "trust_remote_code": bool(m.trust_remote_code)}
            try:
                versions = interpreter_versions(self.interp)
            except HarnessError as e:  # no llm-compressor here (a vLLM-only env): a cached build still serves
                entry = cache.find(model_key, recipe.recipe_text, cal.model_dump())
                if entry is None:
                    raise
                path, meta = entry
                self.log(f"no quantization interpreter here ({str(e).splitlines()[0][:160]}); using the cached "
                         f"checkpoint built with {meta['material']['versions']}: {path}")
                self._checkpoint = (path, {"cache_hit": True, "cache_key": path.name, "seconds": 0.0,
                                           "recipe": recipe.name, "scheme": recipe.scheme,
                                           "quantize_s": meta.get("build", {}).get("quantize_s"),
                                           "versions": meta.get("build", {}).get("versions")})
                return self._checkpoint
            key, material = cache_key(model_key, recipe.recipe_text, cal.model_dump(), versions)

            def build(tmp: Path) -> dict:
                spec = q.QuantSpec(model=model_path, revision=m.revision, tokenizer=self.cfg.resolve(m.tokenizer),
                                   recipe=recipe.recipe_text, calibration=cal,
                                   output_dir=str(tmp), trust_remote_code=m.trust_remote_code,
                                   device_map=self.cfg.quantize.device_map)
                log_path = cache.log_path(key)
                info = q.run_quantization(spec, self.interp, log_path, log=self.log,
                                          timeout_s=self.cfg.quantize.timeout_s,
                                          heartbeat_s=self.cfg.quantize.heartbeat_s)
                check_shards(tmp)
                require_scheme(tmp, recipe.scheme)
                return {k: v for k, v in info.items() if k != "spec"}

            t0 = time.time()
            path, hit = cache.get_or_build(key, material, build, log=self.log)
            import json

            built = json.loads((path / "harness_cache.json").read_text()).get("build", {})
            info = {"cache_hit": hit, "cache_key": key, "seconds": round(time.time() - t0, 2), "recipe": recipe.name,
                    "scheme": recipe.scheme, "quantize_s": built.get("quantize_s"), "versions": built.get("versions")}
            self.log(f"quantized checkpoint {'from cache' if hit else 'built'}: {path}")
            self._checkpoint = (path, info)
        return self._checkpoint

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
                              engine_kwargs=self.cfg.engine_kwargs(precision, self.backend), batch_size=self.batch_size)
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
            res = eng.loglikelihood_rolling(prep.token_ids, token_logprobs=self.token_detail)
            s = DatasetScore(nll_sums=[r.nll_sum for r in res], n_tokens=[r.n_tokens for r in res],
                             eval_s=time.time() - t0, words=prep.words, bytes=prep.bytes,
                             token_logprobs=[r.token_logprobs for r in res] if self.token_detail else None)
            self.log(f"{name} {precision}: PPL {s.ppl:.4f} NLL {s.nll:.6f} tokens {s.tokens} in {s.eval_s:.1f}s")
            self._scores[key] = s
        return self._scores[key]

    def scored(self, name: str, precision: str = "nvfp4") -> bool:
        """Whether this dataset has been scored at this precision in this session."""
        return (name, precision) in self._scores

    def preflight(self) -> None:
        """Before any quantization or engine start of a gate: every dataset prepared (its stats checked) and its
        baseline present, made from the same data and the same model. Each fault found here costs seconds, not an
        hour of quantization or an engine start."""
        if self._preflight_done or self.update_mode:
            return
        for n in self.dataset_names:
            self.baseline(n)
        self._preflight_done = True

    def engine_info(self, precision: str) -> dict:
        return self._engine_info.get(precision, {})

    def _check_kernel(self, precision: str) -> None:
        want = self.cfg.require_kernel
        got = self.engine_info(precision).get("kernel", "?")
        if want and want.lower() not in got.lower():
            raise HarnessError(f"config requires NVFP4 kernel {want!r} but this run used {got!r}; on Hopper set "
                               "linear_backend: emulation for W4A4, or drop require_kernel")

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
        why = identity.mismatches(theirs, self.model_identity())
        dtype_b = b.provenance.get("dtype")
        dtype_c = self.cfg.engine_kwargs("bf16", b.provenance.get("backend") or self.backend).get("dtype")
        if dtype_b and dtype_c and dtype_b != dtype_c:
            why.append(f"dtype {dtype_b} vs {dtype_c}")
        if why:
            raise BaselineError(f"{where}: scored on another model than this config's ({'; '.join(why)}).\n"
                                f"  baseline: {identity.describe(theirs)}\n  config:   "
                                f"{identity.describe(self.model_identity())}\n  rebuild it with: {self.update_hint}")

    def _check_checkpoint_architecture(self, path: str) -> None:
        """An existing checkpoint must be a quantization of this config's model (and of the baselines' model)."""
        from harness import identity

        if not Path(path).is_dir():
            return  # a hub id: its config.json is read by the engine
        mine = {"architecture": identity.local_architecture(Path(path))}
        sources = [("model.path " + self.cfg.model.path, self.model_identity())]
        for n in self.dataset_names:
            if self.store.exists(self.cfg.name, n):
                try:
                    ident = self.store.load(self.cfg.name, n).provenance.get("model_identity")
                except BaselineError:
                    continue
                if ident:
                    sources.append((f"the baseline's model ({n})", ident))
        for what, ident in sources:
            why = identity.mismatches({"architecture": ident.get("architecture")}, mine)
            if why:
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
        return b

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
            p = self.store.write(b)
            self.log(f"wrote baseline {p}")
            tok = self._scores[(b.dataset, "bf16")].token_logprobs
            if tok is not None:
                from harness.token_detail import save_tokens

                save_tokens(self.store.root / b.model / f"{b.dataset}.tokens.npz", tok)
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
                "engine_start": info.get("engine_start"), "offload": _offload_summary(info.get("offload")),
                "model_path": m.path, "revision": m.revision, "model_identity": self.model_identity(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "git_commit": git_commit(self.cfg.root), "eval_s": round(s.eval_s or 0, 3)}
        return Baseline(model=self.cfg.name, dataset=name, ppl=s.ppl, nll=s.nll, tokens=s.tokens,
                        kept_texts=prep.stats.kept_texts, fingerprint=prep.fingerprint, words=prep.words,
                        bytes=prep.bytes,
                        doc_nll_sums=[round(x, 6) for x in s.nll_sums], doc_tokens=list(s.n_tokens),
                        data={**asdict(prep.stats), "rules": prep.rules, "tokenizer": prep.tokenizer_id,
                              "source": prep.source}, provenance=prov)

    # ---- comparison ---------------------------------------------------------
    def comparison(self, name: str) -> Comparison:
        if name not in self._comparisons:  # scores and baselines are fixed once computed: bootstrap once
            self._comparisons[name] = self._compare(name)
        return self._comparisons[name]

    def _compare(self, name: str) -> Comparison:
        b = self.baseline(name)
        s = self.score(name)
        c = compare(name, (b.nll, b.tokens), (s.nll, s.tokens))
        if b.has_documents:
            t = self.cfg.thresholds
            c.interval = paired_bootstrap({name: (b.doc_nll_sums, b.doc_tokens)}, {name: (s.nll_sums, s.n_tokens)},
                                          samples=t.bootstrap_samples, confidence=t.confidence, seed=t.seed)
        return c

    def overall(self) -> Comparison:
        if None not in self._comparisons:
            self._comparisons[None] = self._compare_overall()
        return self._comparisons[None]

    def _compare_overall(self) -> Comparison:
        names = self.dataset_names
        bs = {n: self.baseline(n) for n in names}
        ss = {n: self.score(n) for n in names}
        ref = overall_nll({n: (b.nll, b.tokens) for n, b in bs.items()})
        mod = overall_nll({n: (s.nll, s.tokens) for n, s in ss.items()})
        c = compare("overall", ref, mod)
        if all(b.has_documents for b in bs.values()):
            t = self.cfg.thresholds
            c.interval = paired_bootstrap({n: (b.doc_nll_sums, b.doc_tokens) for n, b in bs.items()},
                                          {n: (s.nll_sums, s.n_tokens) for n, s in ss.items()},
                                          samples=t.bootstrap_samples, confidence=t.confidence, seed=t.seed)
        return c

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

    def threshold(self, name: str | None) -> float:
        return self.threshold_source(name)[0]

    def threshold_source(self, name: str | None) -> tuple[float, str]:
        """The minimum score for a dataset (``None``: overall) and where it came from. Precedence: the command line
        (--min-score), then the config (keys written in it), then the recipe, then the default; a dataset without a
        threshold of its own takes the overall one, by the same precedence."""
        if self.min_score is not None:
            return self.min_score, "--min-score"
        t = self.cfg.thresholds
        rt = {} if self.existing else self.recipe().thresholds
        if name is not None:
            if name in t.datasets:
                return t.datasets[name], "config"
            if name in rt:
                return rt[name], f"recipe {self.recipe_name}"
        if "overall" in t.model_fields_set:
            return t.overall, "config"
        if "overall" in rt:
            return rt["overall"], f"recipe {self.recipe_name}"
        return t.overall, "default"

    def outcome(self, name: str | None) -> Outcome:
        c = self.overall() if name is None else self.comparison(name)
        use_lower = self.cfg.thresholds.use == "lower" and c.interval is not None
        value = c.interval.low if use_lower else c.score
        if not math.isfinite(value):
            raise HarnessError(f"{c.name}: score is not a finite number ({value}); refusing to report it")
        thr, source = self.threshold_source(name)
        return Outcome(name=c.name, comparison=c, threshold=thr, gated_value=value, passed=value >= thr,
                       threshold_source=source)

    def verdict(self) -> Verdict:
        outs = [self.outcome(n) for n in self.dataset_names] + [self.outcome(None)]
        notes = list(self.notes)
        mine = self.engine_info("nvfp4")
        for n in self.dataset_names:
            b = self.store.load(self.cfg.name, n)
            if not b.has_documents:
                notes.append(f"{n}: baseline has no per-document NLLs: point estimate only, no confidence interval")
            theirs = (b.provenance.get("backend"), b.provenance.get("device"))
            if mine and theirs != (self.backend, mine.get("device")):
                notes.append(f"{n}: baseline scored with {theirs[0]} on {theirs[1]}, this run with {self.backend} on "
                             f"{mine.get('device')}: backends agree to ~0.1% PPL; update the baseline on this setup "
                             "for the tightest gate")
        return Verdict(outs, notes)

    def close(self) -> None:
        self.engines.close()


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
