"""Tasks through the gate on CPU (the tiny default, hf backend): the baseline update writes every item, the gate scores
the tasks in its one engine and prints the task table, the report's statistics check out against an exact McNemar
computed here from binomial coefficients, and bad input stops with exit 2 and one line before any engine starts."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_e2e_tiny import cli

pytest_plugins = ["pytester"]

TASKS = {"arc_easy": {"limit": 30}, "winogrande": {"limit": 30, "flips_max_pct": 60},
         "lambada_openai": {"limit": 20}, "hellaswag": {"limit": 20, "use": "lower", "recovery_min": 0.5},
         "gsm8k": {"limit": 1, "recovery_min": 0.0}}


@pytest.fixture(scope="module")
def task_project(quick_project, tmp_path_factory):
    """The quick project (its BF16 dataset baselines made already), with tasks in its config and their baselines."""
    from tests.conftest import copy_project

    root = copy_project(quick_project, tmp_path_factory.mktemp("tasks"))
    cfg = yaml.safe_load((root / "configs/tiny.yaml").read_text())
    cfg["tasks"] = TASKS
    (root / "configs/tiny.yaml").write_text(yaml.safe_dump(cfg))
    return root


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar from binomial coefficients: twice the smaller tail of Binomial(b + c, 1/2), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_update_then_gate_reports_tasks_from_one_engine(task_project, capsys):
    cfg = str(task_project / "configs/tiny.yaml")
    rc, out, err = cli(capsys, "baseline", "update", "--config", cfg, "--force")
    assert rc == 0, err
    for t, spec in TASKS.items():
        stored = json.loads((task_project / "baselines/tiny-qwen2/tasks" / f"{t}.json").read_text())
        assert stored["n"] == spec["limit"] and len(next(iter(stored["correct"].values()))) == spec["limit"]
    assert len(json.loads((task_project / "baselines/tiny-qwen2/tasks/gsm8k.json").read_text())["answers"]) == 1
    rc, out, err = cli(capsys, "gate", "--config", cfg)
    assert rc in (0, 1), err
    assert "Tasks (the same items under BF16 and quantized):" in out
    assert err.count("starting engine") == 1, err  # datasets and tasks in one engine
    rep = json.loads(next((task_project / "reports").glob("*/report.json")).read_text())
    rows = {r["task"]: r for r in rep["tasks"]}
    assert set(rows) == set(TASKS)
    for name, r in rows.items():
        p = r["paired"]
        stored = json.loads((task_project / "baselines/tiny-qwen2/tasks" / f"{name}.json").read_text())
        ref = stored["correct"][r["metric"]]
        assert p["acc_ref"] == pytest.approx(sum(ref) / len(ref))
        assert p["p_value"] == pytest.approx(exact_mcnemar(p["lost"], p["gained"]))
        assert p["flips_pct"] == pytest.approx(100 * (p["lost"] + p["gained"]) / p["n"])
        assert (f"task {name}: " in out) and (("ok   task " + name) in out) == r["passed"]
        flipped = r["flipped_items"]
        assert len(flipped["lost"]) == min(p["lost"], 50) and all(ref[i] == 1 for i in flipped["lost"])
    md = next((task_project / "reports").glob("*/report.md")).read_text()
    assert "## Tasks (the same items under BF16 and quantized)" in md and "McNemar p" in md


def test_the_plugin_gains_one_test_per_task(task_project, pytester):
    """`pytest --harness-config` in the project: one test_task per task of the config, each passing or failing as the
    gate's verdict says (the baselines written by the update test above; the CLI gate's report holds its verdict)."""
    for d in ("configs", "baselines"):
        shutil.copytree(task_project / d, pytester.path / d)
    (pytester.path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--harness-gate-tests", "yes", "--harness-config",
                                     "configs/tiny.yaml", "--recipe", "nvfp4", "--benchmark-disable", "-k",
                                     "test_task", "-rA")
    out = r.stdout.str()
    rep = json.loads(max((task_project / "reports").glob("*/report.json")).read_text())
    verdicts = {t["task"]: "PASSED" if t["passed"] else "FAILED" for t in rep["tasks"]}
    for t, want in verdicts.items():
        assert f"{want} harness/pytest_plugin/gate_tests.py::test_task[tiny-qwen2/nvfp4-{t}]" in out, out[-3000:]
    failed = sum(v == "FAILED" for v in verdicts.values())
    r.assert_outcomes(passed=len(TASKS) - failed, failed=failed)


def test_compare_prints_each_recipe_s_tasks(task_project, capsys):
    """`harness compare` of two recipes, with one of the config's tasks (its baseline written above)."""
    cfg = yaml.safe_load((task_project / "configs/tiny.yaml").read_text())
    cfg["tasks"] = {"winogrande": TASKS["winogrande"]}
    (task_project / "configs/one-task.yaml").write_text(yaml.safe_dump(cfg))
    rc, out, err = cli(capsys, "compare", "--config", str(task_project / "configs/one-task.yaml"), "--recipes",
                       "nvfp4", "nvfp4a16")
    assert rc in (0, 1), err
    assert "Tasks (the same items under BF16 and each recipe):" in out
    for recipe in ("nvfp4", "nvfp4a16"):
        for t in cfg["tasks"]:
            assert any(line.startswith(f"| {recipe} ") and f"| {t} " in line for line in out.splitlines()), (recipe, t)
    md = next((task_project / "reports").rglob("compare.md")).read_text()
    assert "## Tasks (the same items under BF16 and each recipe)" in md and "McNemar p" in md


def _gate_fails_early(capsys, cfg_path: Path, match: str) -> str:
    rc, out, err = cli(capsys, "gate", "--config", str(cfg_path))
    assert rc == 2, err
    assert "starting engine" not in err and "quantiz" not in err.lower().split("error:")[0], err
    said = err[err.index("error:"):]
    assert match in said and len(said.strip().splitlines()) <= 3, err  # "error: ..." (a config's: and its key line)
    return said


def test_bad_task_input_stops_before_any_engine(task_project, tmp_path, capsys):
    base = yaml.safe_load((task_project / "configs/tiny.yaml").read_text())

    def write(tasks) -> Path:
        p = task_project / "configs" / "bad.yaml"
        p.write_text(yaml.safe_dump({**base, "tasks": tasks}))
        return p

    _gate_fails_early(capsys, write({"hellaswag_v2": {}}), "unknown task 'hellaswag_v2'")
    _gate_fails_early(capsys, write({"piqa": {"recovery_min": 1.5}}), "recovery_min")
    rows = tmp_path / "piqa.jsonl"
    rows.write_text('{"goal": "a", "sol1": "b", "sol2": "c", "label": 0}\n{"goal": "a", "sol1": "b", "sol2": \n')
    _gate_fails_early(capsys, write({"piqa": {"source": {"path": "json", "split": "validation",
                                                          "data_files": str(rows)}}}), "piqa.jsonl:2: not a JSON")
    _gate_fails_early(capsys, write({"piqa": {"limit": 5}}), "harness baseline update")  # no piqa baseline stored
