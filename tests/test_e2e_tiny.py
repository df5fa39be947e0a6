"""End to end on the embedded tiny default, through the CLI and the gate session, on CPU."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config.load import load_config
from harness.session.gate import GateSession


def harness(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=600)


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (its imports already paid): exit code, stdout, stderr."""
    from harness.cli.main import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def installed_files(site: Path) -> dict[str, float]:
    return {str(p.relative_to(site)): p.stat().st_mtime for p in site.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory, root, tiny_checkpoint):
    """`harness gate` as a new user runs it: the package built as a wheel and installed (unpacked onto PYTHONPATH,
    the dependencies from this environment), run with no arguments in an empty directory; its checkpoint in the
    run's cache (built first, by the run's warm quantization interpreter: a gate's cold build is the kill and
    Ctrl-C tests')."""
    import zipfile

    tmp = tmp_path_factory.mktemp("installed")
    b = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp / "dist"), str(root)], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    site, work = tmp / "site", tmp / "empty"
    zipfile.ZipFile(next((tmp / "dist").glob("*.whl"))).extractall(site)
    work.mkdir()
    before = installed_files(site)
    r = subprocess.run([sys.executable, "-m", "harness.cli.main", "gate"], capture_output=True, text=True, cwd=work,
                       env={**os.environ, "PYTHONPATH": str(site)}, timeout=600)
    assert installed_files(site) == before, "the gate wrote into the installed package"
    reports = list((work / "reports").glob("*/report.json"))
    return r, (json.loads(reports[0].read_text()) if reports else None), (reports[0].parent if reports else None)


def test_default_gate_passes_and_prints_the_tables(gate_run):
    r, rep, folder = gate_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "/site/harness/_bundled/configs/tiny.yaml" in rep["config"], rep["config"]  # the shipped default ran
    for noise in ("it/s]", "Decompressing model", "Compressing model", "Applying quantization config"):
        assert noise not in r.stdout + r.stderr, noise  # one line per step, no library progress bars
    cols = ["dataset", "precision", "PPL", "NLL", "tokens", "kept_texts", "eval_s"]
    assert re.search(r"^\|\s*" + r"\s*\|\s*".join(cols) + r"\s*\|$", r.stdout, re.M), r.stdout
    assert re.search(r"^\| NVFP4\s+\|", r.stdout, re.M) and "GATE PASSED" in r.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["chart.svg", "gate.log", "report.json", "report.md"]
    assert "<svg" in (folder / "chart.svg").read_text()
    assert rep["checkpoints"]["bf16"]["bytes"] > rep["checkpoints"]["nvfp4"]["bytes"] > 0


def test_the_report_and_the_terminal_say_where_the_time_went(gate_run):
    """Every stage this gate ran took time; the stages and `other` add up to the wall time; the stages agree with
    what the engine and the scores measured on their own clocks (hf backend load time, each dataset's eval_s)."""
    r, rep, folder = gate_run
    t = rep["time"]
    assert list(t["stages"]) == ["prepare", "quantize", "engine_start", "scoring", "judging", "report"]
    assert all(v > 0 for k, v in t["stages"].items() if k != "quantize"), t  # quantize: a cache lookup may be 0.00
    assert sum(t["stages"].values()) + t["other_s"] == pytest.approx(t["wall_s"], abs=0.05)
    assert rep["wall_s"] <= t["wall_s"] + 0.05  # the report's wall time is taken before the report is written
    assert t["stages"]["engine_start"] >= rep["engine"]["engine_start_s"] - 0.01  # the backend's load is inside it
    eval_s = sum(d["nvfp4"]["eval_s"] for d in rep["datasets"])
    assert t["stages"]["scoring"] <= eval_s + 0.01 and t["stages"]["scoring"] > 0.9 * eval_s - 0.05, (t, eval_s)
    assert "## Time" in (folder / "report.md").read_text()
    # a fresh `harness gate` with its checkpoint cached: the data prepared in another process while the engine started
    assert re.search(r"^time: prepare [\d.]+ s \(\+[\d.]+ s beside engine start\), quantize [\d.]+ s, engine start "
                     r"[\d.]+ s, scoring [\d.]+ s, judging [\d.]+ s, report [\d.]+ s, other [\d.]+ s; [\d.]+ s in all$",
                     r.stdout, re.M), r.stdout[-600:]
    assert t["beside"]["prepare"]["during"] == "engine_start" and t["beside"]["prepare"]["seconds"] > 0
    assert "preparing the data in process" in (folder / "gate.log").read_text()


def test_nvfp4_cost_is_measurable_and_above_threshold(gate_run):
    """Below 100 by more than noise (the whole paired-bootstrap interval), overall and on each dataset (a fixture
    that quantization noise helps on one dataset proves nothing there), above the default threshold."""
    _, rep, _ = gate_run
    o = rep["overall"]
    assert o["interval"]["high"] < 100.0, o
    for d in rep["datasets"]:
        assert d["interval"]["high"] < 100.0, (d["dataset"], d["score"], d["interval"])
    assert o["score"] > o["threshold"], o
    assert rep["kernel"] == "hf-fake-quant W4A4"


def test_normal_gate_never_starts_a_bf16_engine(gate_run):
    _, _, folder = gate_run
    log = (folder / "gate.log").read_text()
    assert "starting engine ('hf', 'nvfp4'" in log
    assert "'bf16'" not in log


@pytest.mark.parametrize("recipe", ["negative-control-w2"])
def test_negative_control_recipe_fails_the_gate_readably(capsys, tmp_path, quick_project, recipe):
    """2-bit per-tensor weights (hf only: vLLM has no such kernel). The control vLLM runs, NVFP4 after pruning 90% of
    the weights, is gated on real weights in tests/gpu/test_real_weights.py (its Wanda pass costs CPU CI 22 s)."""
    rc, out, err = cli(capsys, "gate", "--config", str(quick_project / "configs/tiny.yaml"), "--recipe",
                       recipe, "--report-dir", str(tmp_path))
    assert rc == 1, out + err
    assert "GATE FAILED" in out
    line = next(l for l in out.splitlines() if l.startswith("FAIL overall"))
    assert "< min 99.00" in line and "PPL" in line
    assert float(line.split("score ")[1].split()[0]) < 40.0, line  # destroyed, not merely below the line
    # and on the next-token distributions (the tiny config compares them): KL far above, top-1 far below the limits
    assert "FAIL overall: KL mean" in out and "FAIL overall: top-1 agreement" in out, out


def test_run_to_run_noise_is_far_below_the_nvfp4_cost(gate_run, tmp_path):
    """Re-quantizing with another calibration seed moves the score much less than NVFP4 costs."""
    _, rep, _ = gate_run
    cfg = load_config()
    cfg.calibration = {**cfg.calibration, "seed": 7}
    s = GateSession(cfg, quiet=True)
    try:
        other = s.judgement(None).outcome.comparison.score
        assert s.checkpoint().info["cache_hit"] is False  # a different seed is a different cache entry
    finally:
        s.close()
    cost = 100.0 - rep["overall"]["score"]
    assert abs(other - rep["overall"]["score"]) < cost / 2, (other, rep["overall"]["score"])


def test_second_session_hits_the_checkpoint_cache():
    first = GateSession(load_config(), quiet=True)
    path = first.checkpoint().path
    second = GateSession(load_config(), quiet=True)
    ck = second.checkpoint()
    path2, info = ck.path, ck.info
    assert path2 == path and info["cache_hit"] is True


def _edit_config(project: Path, mutate) -> str:
    p = project / "configs" / "tiny.yaml"
    cfg = yaml.safe_load(p.read_text())
    mutate(cfg)
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_changed_data_is_refused_before_scoring_and_update_needs_force(project, capsys):
    kept = json.loads((project / "baselines/tiny-qwen2/wikitext2.json").read_text())["kept_texts"]
    cfg = _edit_config(project, lambda c: c["datasets"]["wikitext2"].update(n_texts=150))
    rc, _, err = cli(capsys, "gate", "--config", cfg)
    assert rc == 2
    assert "prepared data does not match the baseline" in err
    assert f"baseline={kept}" in err and "prepared=" in err and "fingerprint" in err
    assert "quantizing" not in err and "scoring" not in err  # refused before quantization or scoring
    # the cached checkpoint's engine started while the data was prepared elsewhere (prepare_beside_engine): closed
    assert err.count("starting engine") == err.count("closing engine") <= 1
    before = (project / "baselines/tiny-qwen2/wikitext2.json").read_text()
    rc, _, err = cli(capsys, "baseline", "update", "--config", cfg)
    assert rc == 2 and "fingerprint changed" in err and "--force" in err
    assert "starting engine" not in err  # refused before any BF16 scoring
    assert (project / "baselines/tiny-qwen2/wikitext2.json").read_text() == before  # nothing written
    rc, out, err = cli(capsys, "baseline", "update", "--config", cfg, "--force")
    assert rc == 0, err
    assert re.search(r"^\| wikitext2 \| fingerprint \*\s+\|", out, re.M), out
    assert re.search(r"^\| wikitext2 \| kept_texts \*\s+\|", out, re.M), out
    assert json.loads((project / "baselines/tiny-qwen2/wikitext2.json").read_text())["kept_texts"] < kept


def test_report_rerenders_from_json(gate_run, capsys):
    _, _, folder = gate_run
    rc, out, _ = cli(capsys, "report", str(folder / "report.json"))
    assert rc == 0 and out.strip() == (folder / "report.md").read_text().strip()


@pytest.mark.parametrize("cmd", [["gate"], ["quantize"], ["score"], ["baseline", "update"], ["report"],
                                 ["cache", "ls"], ["cache", "clear"], ["data", "stats"]])
def test_every_subcommand_has_help(cmd):
    r = harness(*cmd, "--help")
    assert r.returncode == 0 and "usage: harness" in r.stdout


def test_cache_ls_and_clear(tmp_path, capsys):
    import shutil

    built = GateSession(load_config(), quiet=True).checkpoint().path  # the session's cache: built once per run
    cfg = load_config()
    cfg.cache_dir = str(tmp_path / "cache")
    path = tmp_path / "cache" / "checkpoints" / built.name  # the same entry, in a cache of its own
    shutil.copytree(built, path)
    p = _edit_config_file(cfg, tmp_path)
    rc, out, _ = cli(capsys, "cache", "ls", "--config", p)
    assert rc == 0 and path.name in out and "1 entry in" in out
    rc, out, _ = cli(capsys, "cache", "clear", "--config", p)
    assert rc == 0 and "removed 1 entries" in out
    assert not path.exists()


def _edit_config_file(cfg, tmp_path) -> str:
    root = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((root / "configs/tiny.yaml").read_text())
    d.update(cache_dir=cfg.cache_dir, baselines_dir=str(root / "baselines"), recipes_dir=str(root / "recipes"))
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def test_the_engine_log_travels_with_the_report(gate_run, tmp_path):
    from harness.report.build import write_report

    _, rep, folder = gate_run
    log = tmp_path / "engine-nvfp4.log"
    log.write_text("INFO Model loading took 41.86 GiB and 13.1 seconds\n")
    rep = {**rep, "engine": {**rep["engine"], "engine_log": str(log)}}
    out = write_report(rep, tmp_path / "reports", ["a log line"])
    assert (out / "engine.log").read_text() == log.read_text()
    assert json.loads((out / "report.json").read_text())["engine"]["engine_log"] == "engine.log"


def test_a_missing_optional_library_names_the_extra_and_writes_nothing(capsys, tmp_path, monkeypatch):
    """A plain `pip install .` has no transformers: the gate says which extra to install, before any work."""
    import harness.session.gate

    def no_transformers(*_):  # load_tokenizer(cfg, source)
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(harness.session.gate, "load_tokenizer", no_transformers)
    rc, out, err = cli(capsys, "gate", "--report-dir", str(tmp_path / "reports"))
    assert rc == 2 and "transformers is not installed" in err and "pip install 'nvfp4-gate[hf]'" in err, err
    assert "quantizing" not in err and not (tmp_path / "reports").exists()

    def other(*_):
        raise ModuleNotFoundError("No module named 'mylib'", name="mylib")

    monkeypatch.setattr(harness.session.gate, "load_tokenizer", other)
    rc, out, err = cli(capsys, "gate", "--report-dir", str(tmp_path / "reports"))
    assert rc == 3 and "internal error: ModuleNotFoundError: No module named 'mylib'" in err  # not ours: a bug
