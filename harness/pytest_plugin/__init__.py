"""pytest plugin: options (one group), markers, session state on ``config``, fixtures (harness/pytest_plugin/fixtures.py). Hooks
and fixtures only; the workflow lives in ``harness.stages.run`` and its stages.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.pytest_plugin.fixtures import (harness_checkpoint, harness_config, harness_prepared, harness_scores, harness_session,
                              quantized_checkpoint, scoring_engine)

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
                help="collect the packaged gate tests (harness/pytest_plugin/gate_tests.py): auto = when --harness-config is given "
                     "or the ini option harness_gate_tests is true, and no test file or node id was named")
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
    config.pluginmanager.register(_CaseOrdering(), "harness-case-ordering")
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
    return list(session.genitems(pytest.Module.from_parent(session, path=path, nodeid="harness/pytest_plugin/gate_tests.py")))


class Case:
    """One gate run: a config (model) and a recipe; tests are parametrized over every case x dataset."""

    def __init__(self, cfg, recipe: str):
        self.cfg, self.recipe = cfg, recipe

    @property
    def id(self) -> str:
        return f"{self.cfg.name}/{self.recipe}"

    def __repr__(self) -> str:
        return f"Case({self.id})"


class HarnessState:
    """Per-run state: the loaded configs, the gate cases and their sessions, created lazily."""

    def __init__(self, pytest_config):
        self.pytest_config = pytest_config
        self._configs = None
        self._cases = None
        self.sessions: dict[tuple, object] = {}
        self.updated: set[str] = set()
        self.reports: list[str] = []
        self.verdicts: list[str] = []
        self.internal_errors: list[str] = []  # bugs met in gate tests: the run then exits 3, like the CLI

    def opt(self, name):
        return self.pytest_config.getoption(name)

    @property
    def configs(self) -> list:
        if self._configs is None:
            from harness.config.load import load_config

            self._configs = [load_config(p) for p in (self.opt("harness_config") or [None])]
        return self._configs

    @property
    def cfg(self):
        return self.configs[0]

    def cases(self) -> list[Case]:
        """--recipe, else the config's `recipes` list, else every default recipe that applies to the model."""
        if self._cases is None:
            from harness.recipes.catalog import default_recipes

            from harness.session.gate import EXISTING

            self._cases = []
            for cfg in self.configs:
                if cfg.model.checkpoint:  # an existing checkpoint is gated as it is: no recipes
                    self._cases.append(Case(cfg, EXISTING))
                    continue
                names = ([self.opt("recipe")] if self.opt("recipe") else
                         cfg.recipes if cfg.recipes is not None else default_recipes(cfg.path_of("recipes_dir"), cfg.name))
                self._cases += [Case(cfg, r) for r in names]
        return self._cases

    def session(self, case: Case | None = None, backend: str | None = None):
        from harness.session.gate import GateSession

        case = case or Case(self.cfg, self.opt("recipe") or self.cfg.recipe)
        backend = backend or self.opt("backend") or case.cfg.backend
        key = (case.cfg.source_path, case.recipe, backend)
        if key not in self.sessions:
            update = self.opt("update_baselines") and case.cfg.source_path not in self.updated
            if update:  # baselines are per model: one BF16 update serves every recipe
                self.updated.add(case.cfg.source_path)
            self.sessions[key] = GateSession(
                case.cfg, backend=backend, min_score=self.opt("min_score"), update_baselines=update,
                force=self.opt("harness_force"), recipe=case.recipe, quant_python=self.opt("quant_python"),
                quant_pythonpath=self.opt("quant_pythonpath"), batch_size=self.opt("batch_size"),
                token_detail=self.opt("token_detail"), record_recipe=self.opt("record_recipe"))
            from harness.stages.timings import Busy

            self.sessions[key].busy = Busy()  # its wall time: its preflight, its tests and its report, not the run's
        return self.sessions[key]

    def finish(self, session) -> None:
        """Write the report if the session got as far as scoring every dataset; always close its engine."""
        try:
            with session.busy:  # every session of the plugin has one (session() above)
                self._finish(session)
        except HarnessError as e:
            self.verdicts.append(f"[{session.cfg.name}/{session.recipe_name}] no report: {e}")
        finally:
            session.close()

    def _finish(self, session) -> None:
        from harness.stages.run import finish

        if session.baseline_updates:
            from harness.report.build import update_rows
            from harness.report.markdown import baseline_diff_table

            table = baseline_diff_table(update_rows(session.baseline_updates))
            self.verdicts.append(f"[{session.cfg.name}] baselines updated (old -> new, * = changed):\n{table}")
        if not all(session.scored(n) for n in session.dataset_names):
            return
        done = finish(session, Path(self.opt("harness_report_dir") or session.cfg.path_of("reports_dir")))
        self.reports.append(str(done.folder))
        said = f"\nrecipe result stored: {done.recipe_record}" if done.recipe_record else ""
        self.verdicts.append(f"[{session.cfg.name}/{session.recipe_name}] {done.verdict.summary()}\n"
                             f"{done.time_line}{said}")


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
    foreign = [i for i in items if _not_for_case(i)]
    if foreign:
        config.hook.pytest_deselected(items=foreign)
        items[:] = [i for i in items if not _not_for_case(i)]
    for item in items:  # a gate test whose case scores with vLLM is a GPU test
        case = _case_of(item)
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
        case = _case_of(item)
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
    case = _case_of(item)
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
    if call.excinfo is None or _case_of(item) is None:
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


class _CaseOrdering:
    @pytest.hookimpl(trylast=True)  # after pytest's own fixture-based reordering
    def pytest_collection_modifyitems(self, items):
        _group_by_case(items)


def _case_of(item):
    return getattr(getattr(item, "callspec", None), "params", {}).get("harness_case")


def _group_by_case(items) -> None:
    """Run each case's tests together (file order kept within a case), so its session and engine start once."""
    positions = [n for n, i in enumerate(items) if _case_of(i) is not None]
    if not positions:
        return
    order: dict[int, int] = {}
    for n in positions:
        order.setdefault(id(_case_of(items[n])), len(order))
    rank = {id(items[n]): k for k, n in enumerate(positions)}
    grouped = sorted((items[n] for n in positions),
                     key=lambda i: (order[id(_case_of(i))], i.location[0], i.location[1] or 0, rank[id(i)]))
    for n, item in zip(positions, grouped):
        items[n] = item


def _not_for_case(item) -> bool:
    """A (case, dataset) pair the case's config lacks, or a distribution test of a config without distributions."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    case = params.get("harness_case")
    if case is None:
        return False
    if item.get_closest_marker("harness_distributions") and case.cfg.distributions is None:
        return True
    if item.get_closest_marker("harness_recipe_regression") and case.cfg.recipe_regression is None:
        return True
    if "harness_task" in params and params["harness_task"] not in case.cfg.tasks:
        return True  # a task this case's config lacks (None: no case has tasks)
    return "harness_dataset" in params and params["harness_dataset"] not in case.cfg.datasets


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
