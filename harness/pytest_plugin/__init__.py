"""pytest plugin: options (one group), markers, session state on ``config``, fixtures (harness/pytest_plugin/fixtures.py). Hooks
and fixtures only; the workflow lives in ``harness.stages.run`` and its stages.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.pytest_plugin.fixtures import (harness_checkpoint, harness_config, harness_prepared, harness_scores,
                                            harness_session, quantized_checkpoint, scoring_engine)
from harness.pytest_plugin.ordering import CaseOrdering, case_of, not_for_case
from harness.pytest_plugin.state import Case, HarnessState

__all__ = ["harness_checkpoint", "harness_config", "harness_prepared", "harness_scores", "harness_session",
           "quantized_checkpoint", "scoring_engine"]  # the fixtures pytest registers from this plugin module


def pytest_addoption(parser):
    from harness.cli.options import add_options

    g = parser.getgroup("harness", "NVFP4 quality gate (harness)")
    g.addoption("--harness-config", action="append", default=None, metavar="PATH",
                help="gate config YAML, repeatable: one model each (default: configs/tiny.yaml of this project, else "
                     "the shipped tiny default)")
    add_options(g, ["update_baselines", "force", "min_score", "backend", "recipe", "quant_python", "quant_pythonpath",
                    "batch_size", "report_dir"], "pytest")
    g.addoption("--harness-gate-tests", choices=("auto", "yes", "no"), default="auto",
                help="collect the packaged gate tests (harness/pytest_plugin/gate_tests.py): auto = when "
                     "--harness-config is given or the ini option harness_gate_tests is true, and no test file or node "
                     "id was named")
    parser.addini("harness_gate_tests", type="bool", default=False,
                  help="collect the packaged gate tests on runs of whole folders (as with --harness-config)")
    add_options(g, ["token_detail", "record_recipe"], "pytest")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and vLLM); skipped cleanly on machines without one")
    config.addinivalue_line("markers", "multi_gpu: the tensor-parallel / offload suite (`pytest -m multi_gpu`); "
                                       "tests that need two GPUs skip cleanly on fewer")
    config.addinivalue_line("markers", "harness_gate: a quality-gate test driven by --harness-config")
    config.addinivalue_line("markers", "harness_distributions: a gate test of next-token distributions (collected "
                                       "for configs with `distributions`)")
    config.addinivalue_line("markers", "harness_tasks: a gate test of one task's accuracy against BF16 (collected per "
                                       "task of the config's `tasks`)")
    config.addinivalue_line("markers", "harness_recipe_regression: the recipe against the stored best recipe "
                                       "(collected for configs with `recipe_regression`)")
    config._harness = HarnessState(config)
    config.pluginmanager.register(CaseOrdering(), "harness-case-ordering")
    _add_gate_tests(config)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    """The packaged gate tests, collected from an installed package outside the project, get the node id they have in
    a checkout (``harness/pytest_plugin/gate_tests.py::...``) instead of an empty one."""
    import harness.pytest_plugin.gate_tests as gt

    if Path(module_path).resolve() != Path(gt.__file__).resolve():
        return None
    rootpath = parent.config.rootpath
    if Path(module_path).resolve().is_relative_to(rootpath.resolve()):
        return None
    return pytest.Module.from_parent(parent, path=Path(module_path), nodeid="harness/pytest_plugin/gate_tests.py")


def _add_gate_tests(config) -> None:
    """Collect harness/pytest_plugin/gate_tests.py (test_quantize, test_dataset_score, test_overall_score) beside the user's own
    tests, so a project needs no copy of them: when `--harness-config` is given or the ini option asks for them, on
    runs of whole folders (`pytest`, `pytest tests`; naming a test file or node id leaves them out);
    `--harness-gate-tests yes|no` decides outright."""
    import harness.pytest_plugin.gate_tests as gt

    mode = config.getoption("harness_gate_tests")
    args = [str(a) for a in config.args]
    if mode == "no":
        return
    if mode == "auto":
        asked = bool(config.getoption("harness_config")) or config.getini("harness_gate_tests")
        whole_folders = all(Path(a.split("::")[0]).is_dir() for a in args)
        if not (asked and whole_folders):
            return
    path = Path(gt.__file__).resolve()
    if any(Path(a.split("::")[0]).resolve() == path for a in args):
        return
    config._harness_gate_module = path  # collected beside the session's own items (_gate_items), not as an argument


def _gate_items(session) -> list:
    """The packaged gate tests as items of their own module node under the session. Not an argument path: pytest
    loads the conftest.py files above every path it collects, so an editable install (the module inside a checkout)
    would load that checkout's own test set-up into the user's session (issue 40, finding 3)."""
    path = getattr(session.config, "_harness_gate_module", None)
    if path is None:
        return []
    module = pytest.Module.from_parent(session, path=path, nodeid="harness/pytest_plugin/gate_tests.py")
    return list(session.genitems(module))


def _gpu_available() -> bool:
    if os.environ.get("HARNESS_FORCE_NO_GPU"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.hookimpl(tryfirst=True)  # before -m selection, so `pytest -m gpu` picks up vLLM gate tests
def pytest_collection_modifyitems(session, config, items):
    items.extend(_gate_items(session))
    foreign = [i for i in items if not_for_case(i)]
    if foreign:
        config.hook.pytest_deselected(items=foreign)
        items[:] = [i for i in items if not not_for_case(i)]
    for item in items:  # a gate test whose case scores with vLLM is a GPU test
        case = case_of(item)
        if item.get_closest_marker("harness_gate") and case is not None:
            from harness.backends import backend_spec

            if backend_spec(config.getoption("backend") or case.cfg.backend).needs_gpu:
                item.add_marker(pytest.mark.gpu)
    gpu_items = [i for i in items if any(i.get_closest_marker(m) for m in ("gpu", "multi_gpu", "scale",
                                                                                         "recipes"))]
    if gpu_items and not _gpu_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU: none visible (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """Before any gate test runs, so before any quantization or engine start: each case's preflight (the backend's
    libraries, the report folder, its baselines: every missing one on its own line with the command that makes it).
    A problem is a usage error with those lines, not a dozen failing tests after an hour of quantizing."""
    config = session.config
    state = getattr(config, "_harness", None)
    if state is None or config.option.collectonly:
        return
    cases: dict[int, Case] = {}
    for item in session.items:
        case = case_of(item)
        if case is not None and not item.get_closest_marker("skip"):
            cases.setdefault(id(case), case)
    problems: list[str] = []
    for case in cases.values():
        try:
            s = state.session(case)
            updating = bool(state.opt("update_baselines"))  # one session of this run writes them for all recipes
            missing = [] if updating else [n for n in s.dataset_names if not s.store.exists(s.cfg.name, n)]
            if missing:
                problems.append(f"{case.id}: no baseline yet for " + ", ".join(missing) + ":\n" +
                                "\n".join(f"    {s.store.path(s.cfg.name, n)}" for n in missing) +
                                f"\n  create them with: {s.update_hint}")
                continue
            out = state.opt("harness_report_dir") or s.cfg.path_of("reports_dir")
            with s.busy:
                s.preflight(Path(out), baselines=not updating)
        except HarnessError as e:
            problems.append(f"{case.id}: {e}")
    if problems:
        raise pytest.UsageError("the gate cannot start (nothing was quantized or scored):\n" + "\n".join(problems))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test of a case (the gate's own, or a project test using its fixtures) counts toward that gate's wall time."""
    case = case_of(item)
    state = getattr(item.config, "_harness", None)
    try:
        busy = state.session(case).busy if case is not None and state is not None else None
    except HarnessError:  # the test itself reports it
        busy = None
    with busy or contextlib.nullcontext():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A HarnessError in a gate test is the user's to fix: its message, without a traceback through the harness."""
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is None or case_of(item) is None:
        return
    if call.excinfo.errisinstance(HarnessError):
        rep.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    elif not call.excinfo.errisinstance((AssertionError, pytest.skip.Exception, pytest.fail.Exception,
                                         KeyboardInterrupt)):
        # neither the gate failing (an assertion) nor the user's to fix: a bug, said in one line like the CLI's exit 3
        from harness.cli.main import internal_error_report

        line = internal_error_report(call.excinfo.value)
        item.config._harness.internal_errors.append(f"{item.nodeid}: {line}")
        rep.longrepr = line


def pytest_sessionfinish(session, exitstatus):
    state = getattr(session.config, "_harness", None)
    if state is not None and state.internal_errors:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # 3: a bug, told apart from a failed gate (1)


def pytest_generate_tests(metafunc):
    if "harness_case" not in metafunc.fixturenames:
        return
    state = metafunc.config._harness
    try:
        cases = state.cases()
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    # the same case list (same indices) for every test, so pytest groups tests by case and each case's session
    # (and engine) is set up once; datasets a case's config lacks are deselected in collection_modifyitems
    metafunc.parametrize("harness_case", cases, ids=[c.id for c in cases], scope="session")
    if "harness_dataset" in metafunc.fixturenames:
        names = list(dict.fromkeys(d for c in cases for d in c.cfg.datasets))
        metafunc.parametrize("harness_dataset", names)
    if "harness_task" in metafunc.fixturenames:  # no case with tasks: one placeholder, deselected (no skip shown)
        tasks = list(dict.fromkeys(t for c in cases for t in c.cfg.tasks)) or [None]
        metafunc.parametrize("harness_task", tasks)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = getattr(config, "_harness", None)
    if not state or not (state.verdicts or state.reports):
        return
    tr = terminalreporter
    tr.section("NVFP4 quality gate")
    for v in state.verdicts:
        tr.write_line(v)
    for r in state.reports:
        tr.write_line(f"report: {r}/report.md")


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    from importlib.metadata import PackageNotFoundError, version

    info = {}
    for pkg in ("torch", "transformers", "vllm", "llmcompressor", "compressed-tensors"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    machine_info["harness_versions"] = info
    if _gpu_available():
        import torch

        machine_info["gpu"] = torch.cuda.get_device_name(0)
