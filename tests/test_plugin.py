"""The pytest plugin as users meet it: a project with the plugin, the gate tests and a config."""
from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def importable_harness(monkeypatch, root):
    """pytester's subprocess must import this checkout's harness, installed or not."""
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def gate_project(pytester, quick_project):
    """A user's project as after `pip install nvfp4-gate`: a config and its baselines, no recipes folder (the
    shipped recipes serve), no conftest (the pytest11 entry point loads the plugin) and no copy of the gate tests
    (the plugin collects harness/pytest_plugin/gate_tests.py)."""
    for d in ("configs", "baselines"):
        shutil.copytree(quick_project / d, pytester.path / d)
    (pytester.path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n[tool.pytest.ini_options]\n"
                                                  "harness_gate_tests = true\n")
    return pytester


def test_the_plugin_loads_from_its_entry_point_and_collects_the_gate_tests_only_when_asked(pytester, quick_project):
    from importlib.metadata import entry_points

    plugin = "harness.pytest_plugin"
    assert [e.value for e in entry_points(group="pytest11") if e.value == plugin] == [plugin]
    shutil.copytree(quick_project / "configs", pytester.path / "configs")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    plain = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert "1 test collected" in plain.stdout.str(), plain.stdout.str()  # someone else's project: left alone
    asked = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                         "--harness-config", "configs/tiny.yaml")
    out = asked.stdout.str()
    assert "test_own.py::test_own" in out and "gate_tests.py::test_overall_score[tiny-qwen2/nvfp4]" in out, out
    # theirs + 2 shipped recipes x (quantize, 2 datasets, overall; distributions: 2 datasets, overall); the recipe
    # regression test and the task placeholder of each recipe are deselected: no recipe_regression, no tasks
    assert "15/19 tests collected (4 deselected)" in out, out
    one_file = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", "test_own.py",
                                            "--harness-config", "configs/tiny.yaml")
    assert "1 test collected" in one_file.stdout.str(), one_file.stdout.str()  # a named file: theirs alone
    forced = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", "test_own.py",
                                          "--harness-config", "configs/tiny.yaml", "--harness-gate-tests", "yes")
    assert "15/19 tests collected (4 deselected)" in forced.stdout.str(), forced.stdout.str()
    off = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                       "--harness-config", "configs/tiny.yaml", "--harness-gate-tests", "no")
    assert "1 test collected" in off.stdout.str(), off.stdout.str()


def test_a_user_project_loads_the_plugin_and_not_this_repository_s_conftest(pytester, quick_project, root):
    """Issue 40, finding 3: after an editable install the packaged gate tests lie inside this checkout, and pytest
    loads the conftest.py files above every path it collects: a user's session ran this repository's test set-up
    (its HARNESS_CACHE in a temporary folder, rebuilding checkpoints every run; its quantization summary). In a fresh
    interpreter, as a user runs pytest: the gate tests collected, the user's own conftest loaded, ours not."""
    shutil.copytree(quick_project / "configs", pytester.path / "configs")
    pytester.makeconftest("""
def pytest_collection_finish(session):
    pm = session.config.pluginmanager
    mods = sorted(getattr(p, "__file__", "") for p in pm.get_plugins() if str(getattr(p, "__file__", "")).endswith("conftest.py"))
    print("CONFTESTS", mods)
""")
    r = pytester.runpytest_subprocess("--collect-only", "-q", "-s", "-p", "no:cacheprovider", "--harness-config",
                                      "configs/tiny.yaml")
    out = r.stdout.str()
    assert "harness/pytest_plugin/gate_tests.py::test_overall_score[tiny-qwen2/nvfp4]" in out, out
    loaded = next(ln for ln in out.splitlines() if ln.startswith("CONFTESTS"))
    assert str(pytester.path / "conftest.py") in loaded and str(root / "conftest.py") not in loaded, loaded


def test_missing_baseline_fails_naming_the_update_flag_then_update_recreates_it(gate_project):
    p = gate_project
    target = p.path / "baselines/tiny-qwen2/ultrachat.json"
    target.unlink()
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "--recipe", "nvfp4", "-p", "no:cacheprovider",
                               "--benchmark-disable")
    # a gate without all its baselines cannot reach a verdict: it stops before quantizing or starting an engine,
    # one line per missing baseline and the command that makes them
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*tiny-qwen2/nvfp4: no baseline yet for ultrachat:*", "*baselines/tiny-qwen2/ultrachat.json",
                            "*create them with: pytest --harness-config*--update-baselines*"])
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "--update-baselines", "-p",
                               "no:cacheprovider", "--benchmark-disable")
    r.assert_outcomes(passed=14)  # both default recipes x (quantize, 2 datasets, overall, 3 distribution tests)
    assert target.exists()
    r.stdout.fnmatch_lines(["*baselines updated (old -> new, * = changed)*", "*| ultrachat | ppl * | - * | 2.*",
                            "*GATE PASSED*", "*report: *report.md"])
    assert r.stdout.str().count("baselines updated") == 1  # one BF16 update serves both recipes


def test_the_fixtures_hand_user_tests_the_stage_results(gate_project):
    """...and the gate's time line counts the gate's own work (its preflight, its tests, its report), not the 3 s of
    the project's other test that runs in the same session."""
    pytester = gate_project
    pytester.makepyfile(test_mine="""
import time

from harness.stages.results import Checkpoint, Prepared, Scores

def test_aside():
    time.sleep(3.0)

def test_stages(harness_prepared, harness_checkpoint, harness_scores):
    assert isinstance(harness_prepared, Prepared) and isinstance(harness_checkpoint, Checkpoint)
    assert isinstance(harness_scores, Scores)
    assert sorted(harness_prepared.names) == ["ultrachat", "wikitext2"]
    assert harness_prepared.names == list(harness_scores.datasets)      # the config's order
    assert harness_scores.tokens == harness_prepared.tokens > 0     # every prepared token scored, once
    assert harness_checkpoint.scheme == "NVFP4" and (harness_checkpoint.path / "config.json").exists()
    assert harness_scores.engine["kernel"] == "hf-fake-quant W4A4"
""")
    r = pytester.runpytest_inprocess("test_mine.py", "--harness-config", "configs/tiny.yaml", "--recipe", "nvfp4",
                                      "-p", "no:cacheprovider", "--benchmark-disable")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*tiny-qwen2/nvfp4] GATE PASSED*"])  # the session's report, from the fixtures' scores
    line = next(ln for ln in r.outlines if ln.startswith("time: "))
    # bounded by what the test controls: the aside sleeps 3.0 s, so "other" is at least that if it is counted
    assert float(re.search(r"other ([\d.]+) s;", line)[1]) < 3.0, line


def test_min_score_override_fails_the_gate_and_bad_values_fail_at_the_command_line(gate_project):
    p = gate_project
    # the override replaces every score threshold (the config's 98.5 / 99.0 pass): every score test fails; quantize
    # and the distribution tests (their own limits) pass
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "--recipe", "nvfp4", "--min-score", "150",
                               "-p", "no:cacheprovider", "--benchmark-disable")
    r.assert_outcomes(passed=4, failed=3)
    r.stdout.fnmatch_lines(["*FAIL overall: score * < min 150.00*", "*FAIL ultrachat: score * < min 150.00*"])
    r = p.runpytest_inprocess("--min-score", "abc")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--min-score takes a number such as 99.0, got 'abc'*"])


def test_gpu_marker_is_registered_and_skips_cleanly_without_gpu(pytester):
    pytester.makepyfile("import pytest\n@pytest.mark.gpu\ndef test_needs_gpu():\n    assert False\n")
    r = pytester.runpytest_inprocess("-m", "gpu", "--strict-markers", "-rs",
                                      "-p", "no:cacheprovider")
    import torch

    if torch.cuda.is_available() and not os.environ.get("HARNESS_FORCE_NO_GPU"):  # runs, and fails on purpose
        r.assert_outcomes(failed=1)
    else:
        r.assert_outcomes(skipped=1)
        r.stdout.fnmatch_lines(["*needs a CUDA GPU*"])


def test_a_new_recipe_file_adds_parametrized_tests(gate_project):
    p = gate_project
    before = p.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert "test_dataset_score[tiny-qwen2/nvfp4-ultrachat]" in before.stdout.str()
    assert not any("negative-control-w2" in i for i in _ids(before))  # not in the default set
    from harness.config.bundled import bundled_dir

    text = (bundled_dir("recipes") / "nvfp4.yaml").read_text().replace("name: nvfp4", "name: nvfp4-smallcal")
    (p.path / "recipes").mkdir()  # the project's own recipes join the shipped ones
    (p.path / "recipes/nvfp4-smallcal.yaml").write_text(text.replace("samples: 512", "samples: 16"))
    after = p.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    for test in ("test_quantize[tiny-qwen2/nvfp4-smallcal]", "test_dataset_score[tiny-qwen2/nvfp4-smallcal-wikitext2]",
                 "test_dataset_score[tiny-qwen2/nvfp4-smallcal-ultrachat]", "test_overall_score[tiny-qwen2/nvfp4-smallcal]"):
        assert test in after.stdout.str()
    only = p.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", "--recipe", "nvfp4-smallcal")
    ids = _ids(only)
    assert not any("[tiny-qwen2/nvfp4]" in i for i in ids) and any("[tiny-qwen2/nvfp4-smallcal]" in i for i in ids)


def _ids(result) -> list[str]:
    """The node ids a --collect-only -q run listed (not the rest of its output: the quantization ledger's summary of
    this run names earlier tests' recipes too)."""
    return [ln for ln in result.stdout.lines if "::" in ln and not ln.startswith(" ")]


def test_benchmark_runs_are_saved_and_compared(gate_project, tmp_path):
    p = gate_project
    store = f"file://{tmp_path / 'bench'}"
    # no:xdist: under `pytest -n`, pytest-benchmark turns itself off in any session that has xdist loaded
    args = ("--harness-config", "configs/tiny.yaml", "--recipe", "nvfp4", "-p", "no:cacheprovider", "-p", "no:xdist",
            "--benchmark-storage", store)
    r = p.runpytest_inprocess(*args, "--benchmark-autosave")
    r.assert_outcomes(passed=7)
    saved = list((tmp_path / "bench").rglob("0001_*.json"))
    assert len(saved) == 1
    import json

    runs = {b["name"]: b for b in json.loads(saved[0].read_text())["benchmarks"]}
    extra = {n: b["extra_info"] for n, b in runs.items()}
    uc = extra["test_dataset_score[tiny-qwen2/nvfp4-ultrachat]"]
    stored = json.loads((p.path / "baselines/tiny-qwen2/ultrachat.json").read_text())
    assert uc["tokens"] == stored["tokens"]          # the quantized run scored the BF16 baseline's tokens, all of them
    assert uc["ppl"] == pytest.approx(math.exp(uc["nll"]), rel=1e-12)  # PPL = exp(mean NLL)
    assert extra["test_quantize[tiny-qwen2/nvfp4]"]["recipe"] == "nvfp4"
    assert isinstance(extra["test_quantize[tiny-qwen2/nvfp4]"]["cache_hit"], bool)
    r = p.runpytest_inprocess(*args, "--benchmark-compare")
    r.assert_outcomes(passed=7)
    r.stderr.fnmatch_lines(["*Comparing against benchmarks from: *0001_*"])
    r.stdout.fnmatch_lines(["*test_dataset_score*(0001_*"])


def test_gate_tests_become_gpu_tests_when_scored_with_vllm(gate_project):
    p = gate_project
    cpu = p.runpytest_inprocess("--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider")
    assert "18 deselected" in cpu.stdout.str()  # hf backend (the tiny config): not GPU tests
    gpu = p.runpytest_inprocess("--collect-only", "-q", "-m", "gpu", "--backend", "vllm", "-p", "no:cacheprovider")
    # 2 recipes x 7 gate tests; each recipe's regression test and task placeholder are deselected (no
    # recipe_regression, no tasks in the config)
    assert "14/18 tests collected (4 deselected)" in gpu.stdout.str(), gpu.stdout.str()


def test_distribution_tests_follow_the_config(gate_project):
    """No `distributions`: no distribution tests. Distributions without limits: reported, and the tests say they
    gate nothing (skipped with the reason), never a silent pass."""
    import yaml

    p = gate_project
    cfg_path = p.path / "configs/tiny.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    for key in ("kld_mean_max", "top1_min"):
        del cfg["thresholds"][key]
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = p.runpytest_inprocess("--recipe", "nvfp4", "-p", "no:cacheprovider", "--benchmark-disable", "-rs")
    r.assert_outcomes(passed=4, skipped=3)
    r.stdout.fnmatch_lines(["*no kld_mean_max / top1_min limit is set*reported, not gated*"])
    del cfg["distributions"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    off = p.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    out = off.stdout.str()
    # 6 distribution tests, the 2 recipe regression tests (no recipe_regression) and the 2 task placeholders (no
    # tasks) deselected
    assert "8/18 tests collected (10 deselected)" in out and "_distribution[" not in out, out


# ---- failures: the same checks and words as the CLI (README, "When things go wrong") ------------------------------
def test_pytest_without_baselines_stops_before_quantizing_one_line_each(gate_project):
    p = gate_project
    shutil.rmtree(p.path / "baselines")
    before = _checkpoints()
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "-p", "no:cacheprovider", "--benchmark-disable")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert "the gate cannot start (nothing was quantized or scored)" in err
    assert "tiny-qwen2/nvfp4: no baseline yet for ultrachat, wikitext2" in err  # the config's order
    assert err.count("baselines/tiny-qwen2/wikitext2.json") == 2  # once per case (nvfp4, nvfp4a16)
    assert "create them with: pytest --harness-config" in err and "Traceback" not in err
    assert _checkpoints() == before


def test_pytest_without_the_hf_extra_says_which_extra(gate_project, monkeypatch):
    import importlib.util

    p = gate_project
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "-p", "no:cacheprovider", "--benchmark-disable")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert "transformers is not installed" in err and "pip install 'nvfp4-gate[hf]'" in err
    assert err.count("ModuleNotFoundError") == 0


def test_a_harness_error_inside_a_gate_test_is_its_message_not_a_traceback(gate_project, monkeypatch):
    import harness.session.gate

    def broken(self, *a, **kw):
        raise __import__('harness.errors').errors.HarnessError("quantization failed (exit 3); log: /x/y.log")

    p = gate_project
    monkeypatch.setattr(harness.session.gate.GateSession, "checkpoint", broken)
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "--recipe", "nvfp4", "-p", "no:cacheprovider",
                               "--benchmark-disable", "-k", "quantize")
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "HarnessError: quantization failed (exit 3); log: /x/y.log" in out
    assert "harness/session/gate.py:" not in out  # no traceback through the harness


def _checkpoints() -> set[str]:
    d = Path(os.environ["HARNESS_CACHE"]) / "checkpoints"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def test_a_bug_inside_a_gate_test_is_one_line_and_exit_3(gate_project, monkeypatch):
    import harness.session.gate

    def bug(self, *a, **kw):
        return 1 / 0

    p = gate_project
    monkeypatch.setattr(harness.session.gate.GateSession, "checkpoint", bug)
    r = p.runpytest_inprocess("--harness-config", "configs/tiny.yaml", "--recipe", "nvfp4", "-p", "no:cacheprovider",
                               "--benchmark-disable", "-k", "quantize")
    assert r.ret == pytest.ExitCode.INTERNAL_ERROR  # 3: not "the gate failed"
    r.stdout.fnmatch_lines(["*internal error: ZeroDivisionError: division by zero (traceback in *; please report it)*"])
