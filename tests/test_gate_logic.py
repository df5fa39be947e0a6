"""Gate logic with a fake backend (no model): thresholds, lower bound, kernel requirement, engine lifecycle, and
backends that return garbage."""
from __future__ import annotations

import math
import re
import sys

import pytest

import harness.backends as backends
from harness.backends.base import Backend, DocResult
from harness.config.load import load_config
from harness.errors import BackendError, ConfigError, HarnessError
from harness.session.gate import GateSession
from harness.stages.results import Checkpoint

ALIVE: list = []


class FakeBackend(Backend):
    """BF16: -1.0 nats per token; NVFP4: -1.0 - spec.engine_kwargs['extra'] nats (a fixed, consistent loss)."""

    name = "fake"

    def __init__(self, spec):
        super().__init__(spec)
        assert not ALIVE, "a second engine was started while one is alive"
        ALIVE.append(self)
        self.extra = 0.0 if spec.precision == "bf16" else spec.engine_kwargs.get("extra", 0.005)
        self.kernel = spec.engine_kwargs.get("kernel", "emulation W4A4")
        self.poison = spec.engine_kwargs.get("poison")

    def loglikelihood_rolling(self, docs, progress=None, token_logprobs=False, top_k=0):
        out = []
        for i, d in enumerate(docs):
            per_tok = 1.0 + self.extra * (1 + (i % 3) * 0.1)
            out.append(DocResult(-(len(d) - 1) * per_tok, len(d) - 1))
        if self.poison == "nan":
            out[3] = DocResult(float("nan"), out[3].n_tokens)
        if self.poison == "missing":
            out[3] = DocResult(out[3].logprob_sum, out[3].n_tokens - 1)
        return backends.check_results(out, docs, self.name)

    def info(self):
        return {"backend": "fake", "device": "cpu", "kernel": self.kernel if self.spec.precision != "bf16" else "dense",
                "engine_kwargs": self.spec.engine_kwargs, "versions": {}}

    def close(self):
        if self in ALIVE:
            ALIVE.remove(self)


@pytest.fixture
def session(project, monkeypatch, tmp_path):
    monkeypatch.setattr(backends, "backend_class", lambda name: FakeBackend)
    ALIVE.clear()

    def make(**engine_kwargs):
        cfg = load_config(project / "configs/tiny.yaml")
        cfg.model.engine = {"bf16": {"hf": {}}, "nvfp4": {"hf": dict(engine_kwargs)}}
        cfg.distributions = None  # the PPL logic alone (distributions: tests/test_distributions.py)
        cfg.thresholds.kld_mean_max = cfg.thresholds.top1_min = None
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir(exist_ok=True)
        writer = GateSession(cfg, quiet=True, update_baselines=True)  # fake BF16 baselines in the project copy
        writer.update_baselines()
        s = GateSession(cfg, quiet=True)
        s.provider._checkpoint = Checkpoint(ckpt, {"cache_hit": True, "scheme": "NVFP4", "recipe": "nvfp4"})
        return s

    yield make
    ALIVE.clear()


def test_small_consistent_loss_passes_and_large_fails(session):
    ok = session(extra=0.005).verdict()
    assert ok.passed
    assert 99.3 < ok.outcomes[-1].comparison.score < 99.6
    bad = session(extra=0.05).verdict()
    assert not bad.passed
    assert "FAIL overall" in bad.summary()


def test_gate_on_lower_bound(session):
    s = session(extra=0.01)
    c = s.judgement(None).outcome.comparison
    s.cfg.thresholds.overall = (c.interval.low + c.score) / 2  # between the lower bound and the point estimate
    assert s.judgement(None).outcome.passed
    s.cfg.thresholds.use = "lower"
    o = s.judgement(None).outcome
    assert o.gated_value == c.interval.low < c.score
    assert not o.passed and "score lower bound" in o.message()


def test_required_kernel_is_enforced_right_after_engine_start(session, monkeypatch):
    s = session(kernel="Marlin W4A16 (activations not quantized)")
    s.cfg.require_kernel = "W4A4"
    scored = []
    monkeypatch.setattr(FakeBackend, "loglikelihood_rolling", lambda self, docs, **kw: scored.append(docs))
    with pytest.raises(HarnessError, match="requires NVFP4 kernel 'W4A4' but this run used 'Marlin W4A16"):
        s.score("wikitext2")
    assert scored == [] and ALIVE == []  # refused before any document was scored; the engine is released


def test_a_gate_checks_every_baseline_before_quantizing_or_starting_an_engine(session, monkeypatch):
    s = session()
    s.store.path(s.cfg.name, "wikitext2").unlink()  # the second dataset's baseline is gone
    started = []
    monkeypatch.setattr(GateSession, "checkpoint", lambda self: started.append("quantize"))
    monkeypatch.setattr(FakeBackend, "__init__", lambda self, spec: started.append("engine"))
    with pytest.raises(HarnessError, match=r"(?s)wikitext2.*--update-baselines"):
        s.score("ultrachat")  # the first dataset's own baseline is there: the gate still stops first
    assert started == []


@pytest.mark.parametrize("poison, message", [("nan", "non-finite"), ("missing", "missing prompt logprobs")])
def test_bad_logprobs_never_become_a_number(session, poison, message):
    s = session(poison=poison)
    with pytest.raises(BackendError, match=message):
        s.verdict()


def test_one_engine_at_a_time_and_no_bf16_in_the_normal_gate(session):
    s = session()
    s.verdict()
    assert [k[1] for k in s.engines.opened] == ["nvfp4"]
    s.close()
    assert not ALIVE


def test_too_few_texts_fails_with_counts(session, project):
    s = session()
    s.cfg.datasets["wikitext2"].min_kept_texts = 150
    s._prepared.clear()
    with pytest.raises(HarnessError, match=r"only (\d+) texts survive the rules \(200 selected, (\d+) under 16 "
                                           r"tokens\)") as e:
        s.prepared("wikitext2")
    kept, dropped = map(int, re.search(r"only (\d+) .*, (\d+) under", str(e.value)).groups())
    assert kept + dropped == 200 and kept < 150


def test_baseline_without_documents_gives_point_estimate_and_says_so(session):
    import json

    s = session()
    p = s.store.path(s.cfg.name, "ultrachat")
    d = json.loads(p.read_text())
    d["doc_nll_sums"] = d["doc_tokens"] = None
    p.write_text(json.dumps(d))
    v = s.verdict()
    assert v.outcomes[1].comparison.interval is None and v.outcomes[-1].comparison.interval is None
    assert any("no per-document NLLs: point estimate only" in n for n in v.notes)
    assert math.isfinite(v.outcomes[-1].comparison.score)


def test_asking_for_another_precision_closes_the_current_engine(session):
    s = session()
    first = s.engines.get(("fake", "nvfp4", "x"), lambda: FakeBackend(_spec("nvfp4")))
    assert ALIVE == [first]
    second = s.engines.get(("fake", "bf16", "y"), lambda: FakeBackend(_spec("bf16")))
    assert ALIVE == [second]  # FakeBackend itself asserts that no second engine starts while one is alive
    other = session()  # another session's manager takes over the single slot, process-wide
    third = other.engines.get(("fake", "nvfp4", "z"), lambda: FakeBackend(_spec("nvfp4")))
    assert ALIVE == [third] and s.engines.current is None


def _spec(precision):
    from harness.backends import EngineSpec

    return EngineSpec(model="m", precision=precision, max_model_len=64)


def _with_recipe_thresholds(project, thresholds: dict) -> None:
    import yaml

    p = project / "recipes/nvfp4.yaml"
    r = yaml.safe_load(p.read_text())
    r["thresholds"] = thresholds
    p.write_text(yaml.safe_dump(r))


def test_threshold_precedence_command_line_then_config_then_recipe_then_default(project):
    import yaml

    _with_recipe_thresholds(project, {"overall": 99.7, "ultrachat": 99.6})
    cfg_path = project / "configs/tiny.yaml"
    full = yaml.safe_load(cfg_path.read_text())  # overall 99.0, wikitext2 98.5, ultrachat 98.5
    s = GateSession(load_config(cfg_path), quiet=True)
    assert [s.threshold(n) for n in ("wikitext2", "ultrachat", None)] == [(98.5, "config")] * 2 + [(99.0, "config")]
    assert GateSession(load_config(cfg_path), quiet=True, min_score=99.9).threshold("ultrachat") == \
        (99.9, "--min-score")
    full["thresholds"] = {"datasets": {"wikitext2": 98.0}}  # overall not written: the recipe's counts
    cfg_path.write_text(yaml.safe_dump(full))
    s = GateSession(load_config(cfg_path), quiet=True)
    assert s.threshold("wikitext2") == (98.0, "config")
    assert s.threshold("ultrachat") == (99.6, "recipe nvfp4")
    assert s.threshold(None) == (99.7, "recipe nvfp4")
    _with_recipe_thresholds(project, {})
    s = GateSession(load_config(cfg_path), quiet=True)
    assert s.threshold("ultrachat") == s.threshold(None) == (99.0, "default")


def test_a_recipe_threshold_naming_no_dataset_is_refused(project):
    _with_recipe_thresholds(project, {"overall": 99.0, "c4": 99.0})
    with pytest.raises(ConfigError, match=r"unknown threshold key in recipe nvfp4 'c4'; known .*: kld_mean_max, "
                                          r"overall, top1_min, ultrachat, wikitext2"):
        GateSession(load_config(project / "configs/tiny.yaml"), quiet=True).threshold(None)


def test_the_verdict_and_report_say_where_each_threshold_came_from(session):
    from harness.report.markdown import overall_table
    from harness.stages.run import report_of

    s = session()
    v = s.verdict()
    assert all("min 98.50 (config)" in o.message() or "min 99.00 (config)" in o.message() for o in v.outcomes)
    rep = report_of(s)
    assert rep["overall"]["threshold_source"] == "config"
    assert {d["threshold_source"] for d in rep["datasets"]} == {"config"}
    assert re.search(r"\|\s+99\.00 \(config\) \|", overall_table(rep)), overall_table(rep)


def test_scoring_progress_is_one_bar_over_the_texts_and_only_when_called_back():
    import io

    from harness.stages.progress import ScoringProgress

    out = io.StringIO()
    with ScoringProgress("wikitext2 nvfp4", 100, bar=True, file=out) as p:
        assert "scoring wikitext2 nvfp4" in out.getvalue() and "0/100" in out.getvalue()  # shown before batch 1
        for done in (32, 64, 100):  # the hf backend calls back once a batch, with the running count
            p(done, 100)
        assert (p.bar.n, p.bar.total) == (100, 100)
    quiet = io.StringIO()
    with ScoringProgress("x", 2, bar=False, file=quiet) as p:
        p(1, 2)
    assert quiet.getvalue() == ""


def test_off_a_terminal_scoring_pulses_a_line_every_n_seconds_by_hand():
    """Issue 40, finding 4: over 3 minutes of SmolLM2 scoring on CPU printed nothing where output is not a terminal.
    Ten texts of 100 tokens, a line at most every 30 s: callbacks at 10 s (too soon), 31 s (a line: 5 of 10 done,
    500 tokens in 31 s = 16 tokens/s, 31 s x 5 left / 5 done = 31 s left), 45 s (14 s after the last line: none),
    62 s (all done: the gate's own line follows, no pulse)."""
    from harness.stages.progress import ScoringProgress, duration

    times = iter([0.0, 10.0, 31.0, 45.0, 62.0])
    lines: list[str] = []
    with ScoringProgress("wikitext2 nvfp4", 10, bar=False, pulse=lines.append, sizes=[100] * 10, pulse_s=30,
                         clock=lambda: next(times)) as p:
        for done in (2, 5, 8, 10):
            p(done, 10)
    assert lines == ["scoring wikitext2 nvfp4: 5/10 texts (50%), 16 tokens/s, about 31 s left"]
    assert duration(125) == "2 min 05 s" and duration(59.6) == "1 min 00 s"
    with ScoringProgress("x", 10, bar=True, pulse=lines.append, file=__import__("io").StringIO()) as p:
        p(5, 10)  # a terminal gets the bar, not the lines
    assert len(lines) == 1


def test_the_gate_pulses_into_its_log_where_no_terminal_watches(quick_project, monkeypatch, capsys, tmp_path):
    """The CLI on the hf backend with stderr not a terminal (as in CI) and HARNESS_PULSE_S=0: a pulse line per batch
    in its log, with the texts done and the time left (a BF16 baseline update: the gate's scoring path, no build)."""
    from harness.cli.main import main

    monkeypatch.setenv("HARNESS_PULSE_S", "0")
    rc = main(["baseline", "update", "--config", str(quick_project / "configs/tiny.yaml"), "--batch-size", "8",
               "--set", f"baselines_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 0, err
    kept = int(re.search(r"wikitext2: (\d+) texts kept", err).group(1))
    m = re.search(r"\] scoring wikitext2 bf16: 8/(\d+) texts \((\d+)%\), [\d,]+ tokens/s, about \d+ (min \d\d )?s "
                  r"left", err)
    assert m and int(m.group(1)) == kept and int(m.group(2)) == round(800 / kept), err


def test_only_backends_that_call_back_get_a_bar_and_vllm_all_at_once_keeps_its_own():
    from harness.backends.base import Backend, EngineSpec
    from harness.backends.data_parallel import DataParallelBackend
    from harness.backends.hf import HFBackend
    from harness.backends.vllm import VLLMBackend

    assert Backend.reports_progress and HFBackend.reports_progress and not DataParallelBackend.reports_progress
    spec = EngineSpec(model="m", precision="nvfp4", max_model_len=512)
    one_by_one, at_once = object.__new__(VLLMBackend), object.__new__(VLLMBackend)
    one_by_one.spec, at_once.spec = EngineSpec(**{**spec.__dict__, "batch_size": 1}), spec
    assert one_by_one.reports_progress and not at_once.reports_progress


def test_every_distribution_limit_is_a_config_threshold_and_a_recipe_key():
    """The limits are declared once (judge.LIMITS); a config can set each, and a recipe's thresholds accept each."""
    from harness.config.sections import Thresholds
    from harness.limits import LIMITS

    distribution = {k for k, s in LIMITS.items() if s.scope == "distribution"}
    assert distribution and distribution <= set(Thresholds.model_fields)
    stats = {"kld": {"mean": 0.02, "interval": {"low": 0.01, "high": 0.03}}, "top1_pct": 91.0,
             "top1_interval": {"low": 90.0, "high": 92.0}}
    from harness.stages.judge import judge_limit

    # by hand: KL 0.02 <= 0.025 passes on the point, fails on the pessimistic end 0.03; top-1 91 >= 90.5 passes on the
    # point, fails on its lower end 90.0
    assert judge_limit("d", stats, "kld_mean_max", 0.025, "config", "point").passed
    assert not judge_limit("d", stats, "kld_mean_max", 0.025, "config", "lower").passed
    assert judge_limit("d", stats, "top1_min", 90.5, "config", "point").passed
    o = judge_limit("d", stats, "top1_min", 90.5, "config", "lower")
    assert not o.passed and o.message() == ("FAIL d: top-1 agreement lower bound 90.00% < min 90.50% (config) "
                                            "[CI 90.00..92.00]")


def test_a_ready_checkpoint_starts_its_engine_while_another_process_prepares_the_data(session, monkeypatch, tmp_path):
    """prepare_beside_engine (set here; unset: a fresh process on 2+ cores): the other process is started first, the
    engine starts before its answer is taken, the data it sends is what the gate uses (its log passed on), the time
    line shows its seconds beside the engine start, outside the stages' sum; the gate then runs as always. The real
    process (harness/stages/prepare_ahead.py) runs in the README-path test (test_e2e_tiny.py): a fresh `harness gate` whose
    data then passes the baselines' fingerprint check."""
    import harness.session.flow as pa  # where the gate starts its PrepareAhead
    from harness.timings import line

    here = session()  # the same config, its data prepared in this process (made first: one engine at a time)
    want = {n: here.prepared(n) for n in ("wikitext2", "ultrachat")}
    events = []

    class Ahead:  # the other process's side: started, then asked for its answer
        pid = 4242

        def __init__(self, cfg, names):
            events.append(("started", list(names)))

        def result(self):
            events.append("answer taken")
            return dict(want), ["[12:00:00] wikitext2: from the other process"], 6.5

        def close(self):
            events.append("closed")

    monkeypatch.setattr(pa, "PrepareAhead", Ahead)
    s = session()
    s.cfg.prepare_beside_engine = True
    lines = []
    s.log.external = lines.append
    init = FakeBackend.__init__

    def spy(self, spec):
        events.append(("engine", len(s._prepared)))  # what this process holds as the engine starts
        init(self, spec)

    monkeypatch.setattr(FakeBackend, "__init__", spy)
    assert s.start_beside_prepare(tmp_path / "reports") is True
    assert events == [("started", ["wikitext2", "ultrachat"]), ("engine", 0), "answer taken"] and len(ALIVE) == 1
    assert all(s._prepared[n] is p for n, p in want.items())
    assert "preparing the data in process 4242 while the engine starts" in "\n".join(lines)
    assert "[12:00:00] wikitext2: from the other process" in lines and lines[-1] != lines[0]
    b = s.time_breakdown()
    assert b["beside"] == {"prepare": {"seconds": 6.5, "during": "engine_start"}}
    assert sum(b["stages"].values()) <= b["wall_s"]  # the other process's seconds are not in the sum
    assert re.search(r"prepare \d+\.\d s \(\+6\.5 s beside engine start\)", line(b))
    v = s.verdict()
    assert v.passed and [k[1] for k in s.engines.opened] == ["nvfp4"]


def test_data_that_no_longer_matches_closes_the_early_engine_and_nothing_is_scored(session, monkeypatch, tmp_path):
    """The baselines are checked against the data once it is back: a mismatch closes the engine the gate started
    and stops it before any scoring. Where the checkpoint is still to be built, or the backend needs no GPU and the
    setting is unset, nothing starts early: the data comes first, as always."""
    import dataclasses

    import harness.session.flow as pa  # where the gate starts its PrepareAhead
    from harness.errors import BaselineError

    made = []

    class Ahead:  # another process's answer, with a changed fingerprint
        def __init__(self, cfg, names):
            made.append(names)
            self.pid = 1

        def result(self):
            p = here.prepared("wikitext2")
            return {"wikitext2": dataclasses.replace(p, fingerprint="0" * 16),
                    "ultrachat": here.prepared("ultrachat")}, [], 0.5

        def close(self):
            pass

    here, s, unset, to_build, failing = session(), session(), session(), session(), session()
    monkeypatch.setattr(pa, "PrepareAhead", Ahead)
    s.cfg.prepare_beside_engine = True
    scored = []
    monkeypatch.setattr(FakeBackend, "loglikelihood_rolling", lambda self, docs, **kw: scored.append(docs))
    with pytest.raises(HarnessError, match="prepared data does not match the baseline") as e:
        s.start_beside_prepare(tmp_path / "reports")
    assert isinstance(e.value, BaselineError) and ALIVE == [] and scored == [] and len(made) == 1

    class Failing(Ahead):  # the other process's own error (here: too few texts), with what it logged before it
        def result(self):
            err = HarnessError("wikitext2: only 1 texts survive the rules")
            err.child_log = ["[12:00:00] ultrachat: 200 texts kept"]
            raise err

    monkeypatch.setattr(pa, "PrepareAhead", Failing)
    failing.cfg.prepare_beside_engine = True
    with pytest.raises(HarnessError, match="only 1 texts survive"):
        failing.start_beside_prepare(tmp_path / "reports")
    assert ALIVE == [] and scored == [] and "[12:00:00] ultrachat: 200 texts kept" in failing.log.lines

    # unset: on machines of two or more cores, in a process without transformers (a fresh `harness gate`: the e2e
    # README-path test shows it there); off: not early
    assert unset.cfg.prepare_beside_engine is None and "transformers" in sys.modules
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert unset.start_beside_prepare(tmp_path / "r") is False  # transformers loaded here: preparing here is quick
    monkeypatch.delitem(sys.modules, "transformers")
    unset.ctx = dataclasses.replace(unset.ctx, backend="vllm")  # on the H200 vLLM's start slowed by as much as the overlap saved: prepares first
    assert unset.start_beside_prepare(tmp_path / "r") is False
    unset.ctx = dataclasses.replace(unset.ctx, backend="hf")
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert unset.start_beside_prepare(tmp_path / "r") is False  # one core: nothing to overlap on
    unset.cfg.prepare_beside_engine = False
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert unset.start_beside_prepare(tmp_path / "r") is False
    to_build.cfg.prepare_beside_engine = True
    to_build.provider._checkpoint = None
    monkeypatch.setenv("HARNESS_QUANT_ZYGOTE", "0")  # no quantization interpreter warmed for a build never made
    to_build.cfg.cache_dir = str(tmp_path / "empty-cache")  # nothing cached: it would have to be built
    assert to_build.start_beside_prepare(tmp_path / "r") is False
    assert ALIVE == [] and len(made) == 2 and not to_build._prepared  # no third process


def test_the_model_is_located_once_per_gate(quick_project, monkeypatch, tmp_path):
    """The config's model.path is located once per gate and every stage reads that (issue 42: the model source
    resolved once into the run): quantization's cache key, the tokenizer, the engine, the identity and the report
    all see the same path, and `pypi:` or a hub id would be looked up one time, not at each use."""
    from harness.config import locate as L, schema
    from harness.config.load import load_config
    from harness.session.gate import GateSession
    from harness.stages.run import run_gate

    cfg = load_config(quick_project / "configs/tiny.yaml", {"prepare_beside_engine": False})
    real, seen = L.locate, []

    def counting(p, *a, **k):
        seen.append(p)
        return real(p, *a, **k)

    monkeypatch.setattr(schema, "locate", counting)  # what HarnessConfig.locate and resolve_path call
    s = GateSession(cfg, quiet=True)
    try:
        done = run_gate(s, tmp_path / "reports")
    finally:
        s.close()
    assert done.verdict.passed in (True, False)
    assert seen.count(cfg.model.path) == 1, seen
    assert done.report["checkpoints"]["bf16"]["path"] == s.source.path == real(cfg.model.path, cfg.root).path


def test_the_threshold_reaches_the_verdict_through_each_module_at_most_twice(quick_project, tmp_path):
    """The score threshold's path from the config to the verdict (issue 42): every read of thresholds.overall and
    thresholds.datasets during one gate, by the function that read it, is at most two functions of any one module,
    and it is read where the threshold is chosen (judge.threshold_source), not re-derived along the way."""
    import sys
    from collections import defaultdict

    from harness.config.load import load_config
    from harness.config.sections import Thresholds
    from harness.session.gate import GateSession
    from harness.stages.run import run_gate

    readers = defaultdict(set)

    class Traced(Thresholds):
        def __getattribute__(self, name):
            if name in ("overall", "datasets"):
                f = sys._getframe(1)
                if f.f_globals.get("__name__", "").startswith("harness."):
                    readers[f.f_globals["__name__"]].add(f.f_code.co_name)
            return super().__getattribute__(name)

    cfg = load_config(quick_project / "configs/tiny.yaml", {"prepare_beside_engine": False})
    t = cfg.thresholds
    cfg.thresholds = Traced.model_construct(_fields_set=set(t.model_fields_set), **dict(t))
    s = GateSession(cfg, quiet=True)
    try:
        done = run_gate(s, tmp_path / "reports")
    finally:
        s.close()
    assert done.report["overall"]["threshold"] == t.overall and done.report["overall"]["threshold_source"] == "config"
    assert all(len(fns) <= 2 for fns in readers.values()), dict(readers)  # the bound
    assert dict(readers) == {"harness.stages.judge": {"threshold_source"}}  # and nowhere re-derived


def test_sizing_notes_say_which_thresholds_ask_for_less_than_the_run_detects():
    """By hand: the tiny default's overall interval [98.94, 99.33] at 95% has a standard error of
    0.39 / (2 x 1.959964) = 0.099492 points, so it detects drops from (1.644854 + 0.841621) x 0.099492 = 0.2474 points
    (one-sided alpha 0.05, power 0.8). A threshold of 99.9 allows a drop of 0.10: said; 99.0 allows 1.00: not said;
    a score without an interval says nothing."""
    from harness.metrics import Comparison, Interval
    from harness.stages.judge import sizing_notes

    iv = Interval(98.94, 99.33, 0.95, 1000, 0)
    c = {n: Comparison(n or "overall", 2.84, 2.87, 1.04, 1.05, 100, 99.14, iv) for n in ("wikitext2", None)}
    c["ultrachat"] = Comparison("ultrachat", 2.7, 2.8, 1.0, 1.0, 100, 99.0, None)
    notes = sizing_notes(c, {"wikitext2": 99.0, None: 99.9, "ultrachat": 99.95})
    assert len(notes) == 1 and notes[0].startswith("overall: the threshold 99.90 allows a drop of 0.10 points, but "
                                                   "this run detects drops from 0.25 points"), notes
