"""End to end on the embedded tiny default, through the CLI and the gate session, on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.gate import GateSession


def harness(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=600)


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    r = harness("gate", "--report-dir", str(out))
    reports = list(out.glob("*/report.json"))
    return r, (json.loads(reports[0].read_text()) if reports else None), (reports[0].parent if reports else None)


def test_default_gate_passes_and_prints_the_tables(gate_run):
    r, rep, folder = gate_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| dataset | precision | PPL | NLL | tokens | kept_texts | eval_s |" in r.stdout
    assert "| NVFP4 |" in r.stdout and "GATE PASSED" in r.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["chart.svg", "gate.log", "report.json", "report.md"]
    assert "<svg" in (folder / "chart.svg").read_text()
    assert rep["checkpoints"]["bf16"]["bytes"] > rep["checkpoints"]["nvfp4"]["bytes"] > 0


def test_nvfp4_cost_is_measurable_and_above_threshold(gate_run):
    """Below 100 by more than noise (the whole paired-bootstrap interval), above the default threshold."""
    _, rep, _ = gate_run
    o = rep["overall"]
    assert o["interval"]["high"] < 100.0, o
    assert o["score"] > o["threshold"], o
    assert rep["kernel"] == "hf-fake-quant W4A4"


def test_normal_gate_never_starts_a_bf16_engine(gate_run):
    _, _, folder = gate_run
    log = (folder / "gate.log").read_text()
    assert "starting engine ('hf', 'nvfp4'" in log
    assert "'bf16'" not in log


def test_negative_control_recipe_fails_the_gate_readably():
    r = harness("gate", "--recipe", "negative-control-w2", "--report-dir", os.environ["HARNESS_CACHE"] + "/neg")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "GATE FAILED" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("FAIL overall"))
    assert "< min 99.00" in line and "PPL" in line


def test_run_to_run_noise_is_far_below_the_nvfp4_cost(gate_run, tmp_path):
    """Re-quantizing with another calibration seed moves the score much less than NVFP4 costs."""
    _, rep, _ = gate_run
    cfg = load_config()
    cfg.calibration = {**cfg.calibration, "seed": 7}
    s = GateSession(cfg, quiet=True)
    try:
        other = s.outcome(None).comparison.score
        assert s.checkpoint()[1]["cache_hit"] is False  # a different seed is a different cache entry
    finally:
        s.close()
    cost = 100.0 - rep["overall"]["score"]
    assert abs(other - rep["overall"]["score"]) < cost / 2, (other, rep["overall"]["score"])


def test_second_session_hits_the_checkpoint_cache():
    first = GateSession(load_config(), quiet=True)
    path, _ = first.checkpoint()
    second = GateSession(load_config(), quiet=True)
    path2, info = second.checkpoint()
    assert path2 == path and info["cache_hit"] is True


def _edit_config(project: Path, mutate) -> str:
    p = project / "configs" / "tiny.yaml"
    cfg = yaml.safe_load(p.read_text())
    mutate(cfg)
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_changed_data_is_refused_before_scoring_and_update_needs_force(project):
    cfg = _edit_config(project, lambda c: c["datasets"]["wikitext2"].update(n_texts=150))
    r = harness("gate", "--config", cfg)
    assert r.returncode == 2
    assert "prepared data does not match the baseline" in r.stderr
    assert "baseline=109" in r.stderr and "prepared=" in r.stderr and "fingerprint" in r.stderr
    assert "quantizing" not in r.stderr  # refused before any quantization or scoring
    before = (project / "baselines/tiny-qwen2/wikitext2.json").read_text()
    r = harness("baseline", "update", "--config", cfg)
    assert r.returncode == 2 and "fingerprint changed" in r.stderr and "--force" in r.stderr
    assert (project / "baselines/tiny-qwen2/wikitext2.json").read_text() == before  # nothing written
    r = harness("baseline", "update", "--config", cfg, "--force")
    assert r.returncode == 0, r.stderr
    assert "| wikitext2 | fingerprint * |" in r.stdout and "| wikitext2 | kept_texts * |" in r.stdout
    assert json.loads((project / "baselines/tiny-qwen2/wikitext2.json").read_text())["kept_texts"] < 109


def test_report_rerenders_from_json(gate_run):
    _, _, folder = gate_run
    r = harness("report", str(folder / "report.json"))
    assert r.returncode == 0 and r.stdout.strip() == (folder / "report.md").read_text().strip()


@pytest.mark.parametrize("cmd", [["gate"], ["quantize"], ["score"], ["baseline", "update"], ["report"],
                                 ["cache", "ls"], ["cache", "clear"], ["data", "stats"]])
def test_every_subcommand_has_help(cmd):
    r = harness(*cmd, "--help")
    assert r.returncode == 0 and "usage: harness" in r.stdout


def test_cache_ls_and_clear(tmp_path):
    env_cache = tmp_path / "cache"
    cfg = load_config()
    cfg.cache_dir = str(env_cache)
    path, _ = GateSession(cfg, quiet=True).checkpoint()
    p = _edit_config_file(cfg, tmp_path)
    r = harness("cache", "ls", "--config", p)
    assert r.returncode == 0 and path.name in r.stdout and "1 entry in" in r.stdout
    r = harness("cache", "clear", "--config", p)
    assert r.returncode == 0 and "removed 1 entries" in r.stdout
    assert not path.exists()


def _edit_config_file(cfg, tmp_path) -> str:
    root = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((root / "configs/tiny.yaml").read_text())
    d.update(cache_dir=cfg.cache_dir, baselines_dir=str(root / "baselines"), recipes_dir=str(root / "recipes"))
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def test_the_engine_log_travels_with_the_report(gate_run, tmp_path):
    from harness.report import write_report

    _, rep, folder = gate_run
    log = tmp_path / "engine-nvfp4.log"
    log.write_text("INFO Model loading took 41.86 GiB and 13.1 seconds\n")
    rep = {**rep, "engine": {**rep["engine"], "engine_log": str(log)}}
    out = write_report(rep, tmp_path / "reports", ["a log line"])
    assert (out / "engine.log").read_text() == log.read_text()
    assert json.loads((out / "report.json").read_text())["engine"]["engine_log"] == "engine.log"
