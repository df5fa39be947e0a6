"""Every failure is a clear exit 2 (or 3 for a bug), found before the work where it can be: one test per row of the
README's failure table that this file covers. Exit 1 means one thing: the gate failed."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

import early
from harness.config.load import load_config
from harness.errors import BaselineError, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *args) -> tuple[int, str, str]:
    from harness.cli.main import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def checkpoints() -> set[str]:
    d = Path(os.environ["HARNESS_CACHE"]) / "checkpoints"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def quick_cfg(quick_project) -> str:
    return str(quick_project / "configs/tiny.yaml")


# ---- where the report goes: checked before any work ----------------------------------------------------------------
def test_a_report_dir_inside_a_file_is_refused_before_any_work(capsys, tmp_path, quick_project):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = checkpoints()
    rc, out, err = run(capsys, "gate", "--config", quick_cfg(quick_project), "--report-dir", str(blocker / "reports"))
    assert rc == 2, err
    assert f"report folder {blocker / 'reports'}: {blocker} on that path is a file" in err and "--report-dir" in err
    assert "Traceback" not in err and out == ""
    assert checkpoints() == before  # nothing quantized


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_read_only_or_full_report_disk_is_refused_before_any_work(capsys, tmp_path, quick_project, monkeypatch,
                                                                    fault):
    import shutil
    import tempfile

    if fault == "read-only":  # as root a chmod does not stop writes: the write itself is refused here
        def refuse(*a, **kw):
            raise PermissionError(13, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    rc, _, err = run(capsys, "gate", "--config", quick_cfg(quick_project), "--report-dir", str(tmp_path / "r"))
    assert rc == 2, err
    assert ("not writable (Read-only file system)" if fault == "read-only" else "only 1.0 MiB free") in err


def test_the_verdict_is_printed_before_the_report_and_stands_if_the_report_cannot_be_written(capsys, tmp_path,
                                                                                           quick_project, monkeypatch):
    import harness.stages.render

    def disk_full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(harness.stages.render, "write_report", disk_full)  # where the render stage calls it
    rc, out, err = run(capsys, "gate", "--config", quick_cfg(quick_project), "--report-dir", str(tmp_path / "r"))
    assert rc == 2, err
    assert "GATE PASSED" in out  # said before the report was attempted
    assert "the verdict above stands, but its report could not be written" in err and "No space left" in err


def test_a_chart_that_fails_leaves_the_rest_of_the_report(capsys, tmp_path, quick_project, monkeypatch):
    import harness.report.build

    def broken(rep, path):
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(harness.report.build, "write_chart", broken)
    rc, out, err = run(capsys, "gate", "--config", quick_cfg(quick_project), "--report-dir", str(tmp_path / "r"))
    assert rc == 0, err
    folder = next((tmp_path / "r").iterdir())
    md = (folder / "report.md").read_text()
    assert "chart not drawn: ValueError: Axis limits cannot be NaN or Inf" in md
    assert not (folder / "chart.svg").exists() and (folder / "report.json").exists()
    assert (folder.stat().st_mode & 0o055) == (0o755 & ~_umask() & 0o055)  # readable by the team, as mkdir makes it


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_two_reports_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """A report folder is published by one rename; a name already taken (another gate, same second) moves on."""
    import harness.report.build as rp
    from harness.atomic import rename_unique

    base = tmp_path / "20261129-120000-m-r"
    base.mkdir()
    (base / "report.md").write_text("the other gate's")
    mine = tmp_path / ".tmp"
    mine.mkdir()
    (mine / "report.md").write_text("mine")
    got = rename_unique(mine, base)
    assert got.name == "20261129-120000-m-r-2" and (got / "report.md").read_text() == "mine"
    assert (base / "report.md").read_text() == "the other gate's"
    # and through write_report, many at once with the clock stopped
    monkeypatch.setattr(rp.time, "strftime", lambda fmt, *a: "20261129-120000")
    monkeypatch.setattr(rp, "write_chart", lambda rep, path: Path(path).write_text("<svg/>"))
    monkeypatch.setattr(rp, "render_markdown", lambda rep: "# report\n")
    rep = {"model": "m", "recipe": "r", "engine": {}}
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(rp.write_report(rep, tmp_path / "many", ["log"])))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({o.name for o in outs}) == 6 and all((o / "report.md").exists() for o in outs)
    assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith(".")]  # no temp folder left


# ---- data -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_an_empty_dataset_file_says_it_holds_no_rows(capsys, tmp_path, kind):
    f = tmp_path / f"test.{kind}"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), f)
    else:
        f.write_text("")
    rc, _, err = run(capsys, "data", "stats", "--dataset", "wikitext2", "--data-path", str(f), "--tokenizer",
                     str(ROOT / "harness/tiny/model"))
    assert rc == 2, err
    assert f"{f} holds no rows" in err and "Traceback" not in err


@pytest.mark.parametrize("fault", ["missing parquet", "empty jsonl", "malformed jsonl", "damaged parquet",
                                   "missing calibration"])
def test_bad_data_files_stop_the_gate_before_any_engine_or_quantization(capsys, tmp_path, quick_project, monkeypatch,
                                                                        fault):
    """Issue 40, finding 2: each of these got exit 2 only after the engine had started (the data is prepared beside
    the start by default on CPU), and the malformed line got datasets' "An error occurred while generating the
    dataset" with the hint "missing or unreadable". Now: before any engine or build, the file and line named."""
    import harness.backends

    good = tmp_path / "ok.jsonl"
    good.write_text('{"text": "one"}\n')
    bad = {"missing parquet": (tmp_path / "gone.parquet", None),
           "empty jsonl": (tmp_path / "empty.jsonl", ""),
           "malformed jsonl": (tmp_path / "rows.jsonl", '{"text": "one"}\n\n{"text": "two"}\n{"text": broken}\n'),
           "damaged parquet": (tmp_path / "bad.parquet", "PAR1 not really"),
           "missing calibration": (tmp_path / "no-cal.parquet", None)}[fault]
    path, content = bad
    if content is not None:
        path.write_text(content)
    said = {"missing parquet": f"{path}: data file not found; fix data_files",
            "empty jsonl": f"{path} holds no rows",
            "malformed jsonl": f"{path}:4: not valid JSON (Expecting value at column 10); fix or remove that line",
            "damaged parquet": f"{path}: not a readable parquet file (",
            "missing calibration": f"{path}: data file not found"}[fault]
    started = []
    monkeypatch.setattr(harness.backends, "make_backend", lambda *a, **kw: started.append(a) or 1 / 0)
    where = "calibration" if fault == "missing calibration" else "datasets.wikitext2.source"
    builder = "parquet" if path.suffix == ".parquet" else "json"
    sets = [f"{where}.data_files={path}", f"{where}.path={builder}"] + ([] if "calibration" in where else
                                                                        [f"{where}.split=train"])
    before = checkpoints()
    rc, out, err = run(capsys, "gate", "--config", quick_cfg(quick_project), "--report-dir", str(tmp_path / "r"),
                       *[a for kv in sets for a in ("--set", kv)], "--set", "prepare_beside_engine=true")
    assert rc == 2, err
    assert said in err and "Traceback" not in err, err
    assert started == [] and checkpoints() == before  # no engine, nothing quantized


# ---- the config: refused when it loads, in the harness's words -----------------------------------------------------
@pytest.mark.parametrize("override,said", [
    ({"model.engine.bf16.hf.threads": "two"}, "engine.bf16.hf.threads: expected int, got 'two'"),
    ({"model.engine.nvfp4.hf.cpu_matmul": "fast"}, "engine.nvfp4.hf.cpu_matmul: 'fast' is not one of fp32, native"),
    ({"quantize.cpu_matmul": "fast"}, "cpu_matmul: Input should be 'fp32' or 'native'"),
    ({"thresholds.datasets.wikitext2": -5}, "thresholds.datasets.wikitext2: Input should be greater than 0 (got -5)"),
    ({"calibration.samples": "sixty-four"}, "samples: Input should be a valid integer"),
    ({"calibration.sample": 64}, "sample: unknown key; allowed keys: path, name, split"),
])
def test_wrong_values_are_refused_when_the_config_loads(override, said):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/tiny.yaml", override)
    assert said in str(e.value) and "pydantic" not in str(e.value) and "errors.pydantic.dev" not in str(e.value)


def test_a_recipe_may_set_the_distribution_limits(project):
    from harness.session.gate import GateSession

    r = yaml.safe_load((project / "recipes/nvfp4.yaml").read_text())
    r["thresholds"] = {"overall": 98.0, "kld_mean_max": 0.5, "top1_min": 50.0}
    (project / "recipes/nvfp4.yaml").write_text(yaml.safe_dump(r))
    cfg = yaml.safe_load((project / "configs/tiny.yaml").read_text())
    del cfg["thresholds"]["kld_mean_max"], cfg["thresholds"]["top1_min"]
    (project / "configs/tiny.yaml").write_text(yaml.safe_dump(cfg))
    s = GateSession(load_config(project / "configs/tiny.yaml"), quiet=True)
    assert s.recipe().thresholds["kld_mean_max"] == 0.5  # accepted, no "unknown threshold key"
    from harness.stages.judge import limit_source

    assert limit_source("kld_mean_max", s.cfg.thresholds, s.recipe().thresholds, s.recipe_name) == (0.5, "recipe nvfp4")


# ---- baselines: every check before quantizing ----------------------------------------------------------------------
def test_a_baseline_whose_numbers_do_not_add_up_is_refused_with_the_rebuild_command(project):
    from harness.session.gate import GateSession

    p = project / "baselines/tiny-qwen2/wikitext2.json"
    b = json.loads(p.read_text())
    b["nll"] += 0.05  # the per-document sums still say otherwise
    b["ppl"] = __import__("math").exp(b["nll"])
    p.write_text(json.dumps(b))
    s = GateSession(load_config(project / "configs/tiny.yaml"), quiet=True)
    with pytest.raises(BaselineError, match=r"inconsistent baseline: nll .*, but its per-document sums give .*"
                                            r"rebuild it with: pytest --harness-config"):
        s.preflight()


def test_a_truncated_distributions_file_is_refused_with_the_baseline_checks(project):
    from harness.session.gate import GateSession

    f = project / "baselines/tiny-qwen2/ultrachat.topk.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    s = GateSession(load_config(project / "configs/tiny.yaml"), quiet=True)
    before = checkpoints()
    with pytest.raises(BaselineError, match=r"ultrachat.topk.npz: \d+ bytes where the baseline recorded \d+ "
                                            r"\(replaced, truncated or damaged"):
        s.score("ultrachat")
    assert checkpoints() == before and s.engines.opened == []


# ---- reports -------------------------------------------------------------------------------------------------------
def test_report_refuses_a_json_that_is_not_a_report(capsys, tmp_path):
    f = tmp_path / "other.json"
    f.write_text(json.dumps({"results": {"wikitext": {"word_perplexity": 10.0}}}))
    rc, _, err = run(capsys, "report", str(f))
    assert rc == 2 and "is not a harness report (schema_version None" in err and "KeyError" not in err


def test_a_report_names_its_baselines_and_its_confidence(capsys, tmp_path, quick_project):
    cfg = yaml.safe_load((quick_project / "configs/tiny.yaml").read_text())
    cfg["thresholds"]["confidence"] = 0.9
    alt = quick_project / "configs/tiny-90.yaml"
    alt.write_text(yaml.safe_dump({**cfg, "baselines_dir": str(quick_project / "baselines")}))
    rc, out, err = run(capsys, "gate", "--config", str(alt), "--report-dir", str(tmp_path / "r"))
    assert rc == 0, err
    assert "90% CI" in out and "95% CI" not in out
    md = (next((tmp_path / "r").iterdir()) / "report.md").read_text()
    assert re.search(r"- baseline wikitext2: `.*wikitext2.json`, scored 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d with hf on cpu "
                     r"\(torch .*transformers .*\)", md), md
    assert re.search(r"\| 90% CI\s+\|", md), md


# ---- the command line: exit codes ----------------------------------------------------------------------------------
def test_an_unexpected_error_is_exit_3_with_the_traceback_in_a_file(capsys, monkeypatch):
    import harness.cli.main as cli

    def bug(a):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_quantize", bug)
    rc, out, err = run(capsys, "quantize")
    assert rc == 3
    m = re.search(r"internal error: ZeroDivisionError: division by zero \(traceback in (\S+); please report it\)", err)
    assert m, err
    assert "Traceback" not in err and 'raise ZeroDivisionError("division by zero")' in Path(m[1]).read_text()


@pytest.mark.own_quantization  # interrupting a build of its own is what it tests
@pytest.mark.parametrize("scenario,code,said", [
    pytest.param("SIGINT-build", 130, "interrupted", id="SIGINT-build", marks=pytest.mark.early("SIGINT-build")),
    pytest.param("SIGTERM-import", 143, "terminated (SIGTERM)", id="SIGTERM-import",
                 marks=pytest.mark.early("SIGTERM-import"))])
def test_ctrl_c_and_a_ci_cancel_leave_no_half_report_no_cache_entry_and_no_orphan(scenario, code, said):
    """Interrupted while llm-compressor builds (the warm quantization interpreter's forked child runs) or while the
    quantization interpreter still imports (the gate checks its input and prepares its data meanwhile): either way
    no report, no cache entry, no process left. The gate runs in the background from the run's start
    (tests/early.py): its start-up is most of this test's time."""
    r = early.result(scenario)
    assert r["started"], f"the gate never started quantizing (or building): {r['stderr']}"
    assert r["returncode"] == code, r["stderr"]
    assert f"{said}: no report written; engines closed" in r["stderr"]
    assert not r["reports"].exists() or not any(r["reports"].iterdir())
    ckpts = r["cache"] / "checkpoints"
    assert not ckpts.exists() or list(ckpts.iterdir()) == []
    assert not r["orphan_in_ps"] and r["procs_left"] == [], "the quantization child outlived the gate"


# ---- where outputs go ------------------------------------------------------------------------------------------------
def test_without_pyproject_outputs_go_to_the_working_directory_or_the_declared_root(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "configs").mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    (proj / "configs/m.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(proj)
    c = load_config(proj / "configs/m.yaml")
    assert c.path_of("reports_dir") == proj / "reports" and c.path_of("baselines_dir") == proj / "baselines"
    (proj / "configs/m.yaml").write_text(yaml.safe_dump({**cfg, "root": "../results"}))
    monkeypatch.chdir(tmp_path)
    c = load_config(proj / "configs/m.yaml")
    assert c.path_of("reports_dir") == proj / "results" / "reports"


# ---- the cache lock --------------------------------------------------------------------------------------------------
def test_a_waiter_names_a_holder_that_writes_its_holder_file_late(tmp_path):
    """The holder takes the lock, then writes who it is: a waiter looking in between waits for the name."""
    from filelock import FileLock

    from harness.quant.cache_lock import cache_lock

    path = tmp_path / "k.lock"
    holder = path.with_suffix(".holder.json")
    said: list[str] = []
    locked = threading.Event()

    def late_holder():  # filelock's lock belongs to the thread that takes it: take and release it here
        lock = FileLock(str(path), thread_local=False, is_singleton=False)
        lock.acquire()
        locked.set()
        time.sleep(1.5)
        holder.write_text(json.dumps({"pid": 4242, "host": "h", "since": "t", "what": "building k"}))
        time.sleep(1.0)
        holder.unlink()
        lock.release()

    t = threading.Thread(target=late_holder)
    t.start()
    locked.wait(10)
    with cache_lock(path, "waiting test", timeout_s=30, heartbeat_s=0.5, log=said.append):
        pass
    t.join()
    assert said and "pid 4242 on h" in said[0] and "unknown process" not in " ".join(said), said


def test_the_chart_shows_a_failing_score_and_keeps_labels_off_the_error_bars(tmp_path):
    from harness.report.chart import chart_layout, write_chart

    scores, thresholds = [0.5, 99.3], [99.0, 99.0]
    cis = [{"low": 0.3, "high": 0.8}, {"low": 98.9, "high": 99.7}]
    lo, hi, label_y = chart_layout(scores, thresholds, cis)
    assert (scores[0] - lo) / (hi - lo) >= 0.05  # a visible bar, not a sliver on an axis that starts at the score
    assert all(y > ci["high"] for y, ci in zip(label_y, cis)) and max(label_y) < hi
    rep = {"model": "m", "recipe": "r", "backend": "hf", "gate": {"confidence": 0.9},
           "datasets": [{"dataset": "d", "score": 0.5, "interval": cis[0], "threshold": 99.0}],
           "overall": {"score": 99.3, "interval": cis[1], "threshold": 99.0}}
    write_chart(rep, tmp_path / "c.svg")
    svg = (tmp_path / "c.svg").read_text()
    assert "threshold (min score)" in svg and "90% CI" in svg and "BF16 = 100" in svg  # the legend


@pytest.mark.parametrize("scores,thresholds,cis", [
    ([99.14, 99.3], [150.0, 99.0], [None, None]),                                 # issue 40, finding 6: min 150
    ([100.16, 100.2], [99.0, 99.0], [{"low": 100.05, "high": 101.9}, None]),      # a CI above 100
    ([62.75, 70.0], [60.0, 40.0], [{"low": 61.59, "high": 63.94}, None]),         # a threshold far below
])
def test_the_chart_axis_holds_every_threshold_and_interval(scores, thresholds, cis):
    """The threshold line that failed a gate (thresholds.overall: 150 against 99.14) fell outside the axis, so the red
    bar had no visible reason: the axis spans every score, threshold and interval end, with room to spare."""
    from harness.report.chart import chart_layout

    lo, hi, _ = chart_layout(scores, thresholds, cis)
    ends = [*scores, *thresholds, *(v for c in cis if c for v in (c["low"], c["high"]))]
    assert lo < min(ends) and hi > max(ends), (lo, hi, ends)
