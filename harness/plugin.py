"""pytest plugin: options (one group), markers, session state on ``config``, fixtures. Hooks and fixtures only;
the workflow lives in ``harness.gate``.
"""
from __future__ import annotations

import argparse
import os

import pytest

from harness.errors import HarnessError


def _min_score(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--min-score takes a number such as 99.0, got {v!r}") from None
    if not 0 < f <= 200:
        raise argparse.ArgumentTypeError(f"--min-score must be in (0, 200], got {f}")
    return f


def _positive_int(v: str) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {i}")
    return i


def pytest_addoption(parser):
    g = parser.getgroup("harness", "NVFP4 quality gate (harness)")
    g.addoption("--harness-config", default=None, metavar="PATH",
                help="gate config YAML (default: configs/tiny.yaml, the embedded tiny model)")
    g.addoption("--update-baselines", action="store_true", default=False,
                help="score BF16 and rewrite the baselines (atomically) before gating")
    g.addoption("--force", "--harness-force", dest="harness_force", action="store_true", default=False,
                help="with --update-baselines: accept a changed data fingerprint")
    g.addoption("--min-score", type=_min_score, default=None, metavar="SCORE",
                help="override every threshold (overall and per dataset)")
    g.addoption("--backend", choices=("hf", "vllm"), default=None, help="scoring backend (default: the config's)")
    g.addoption("--recipe", default=None, metavar="NAME", help="recipe name in recipes/ (default: the config's)")
    g.addoption("--quant-python", default=None, metavar="PYTHON",
                help="interpreter that has llmcompressor (default: $HARNESS_QUANT_PYTHON or this one)")
    g.addoption("--quant-pythonpath", default=None, metavar="PATHS",
                help="extra PYTHONPATH for the quantization interpreter (default: $HARNESS_QUANT_PYTHONPATH)")
    g.addoption("--batch-size", type=_positive_int, default=None, metavar="N",
                help="requests per scoring batch; 1 reproduces the reference's one-at-a-time evaluation")
    g.addoption("--harness-report-dir", default=None, metavar="DIR", help="where reports go (default: the config's)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and vLLM); skipped cleanly on machines without one")
    config.addinivalue_line("markers", "harness_gate: a quality-gate test driven by --harness-config")
    config._harness = HarnessState(config)


class HarnessState:
    """Per-run state: the loaded config and the gate session(s), created lazily."""

    def __init__(self, pytest_config):
        self.pytest_config = pytest_config
        self._cfg = None
        self.sessions: dict[str, object] = {}
        self.reports: list[str] = []
        self.verdicts: list[str] = []

    def opt(self, name):
        return self.pytest_config.getoption(name)

    @property
    def cfg(self):
        if self._cfg is None:
            from harness.config import load_config

            self._cfg = load_config(self.opt("harness_config"))
        return self._cfg

    def session(self, backend: str | None = None):
        from harness.gate import GateSession

        backend = backend or self.opt("backend") or self.cfg.backend
        if backend not in self.sessions:
            self.sessions[backend] = GateSession(
                self.cfg, backend=backend, min_score=self.opt("min_score"),
                update_baselines=self.opt("update_baselines"), force=self.opt("harness_force"),
                recipe=self.opt("recipe"), quant_python=self.opt("quant_python"),
                quant_pythonpath=self.opt("quant_pythonpath"), batch_size=self.opt("batch_size"))
        return self.sessions[backend]

    def finish(self, session) -> None:
        """Write the report if the session got as far as scoring every dataset."""
        from harness.report import build_report, write_report

        try:
            if not all((n, "nvfp4") in session._scores for n in session.dataset_names):
                return
            verdict = session.verdict()
            rep = build_report(session, verdict)
            out = self.opt("harness_report_dir") or session.cfg.path_of("reports_dir")
            path = write_report(rep, out, session.log_lines)
            self.reports.append(str(path))
            self.verdicts.append(verdict.summary())
        except HarnessError as e:
            self.verdicts.append(f"no report: {e}")
        finally:
            session.close()


def _gpu_available() -> bool:
    if os.environ.get("HARNESS_FORCE_NO_GPU"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.hookimpl(tryfirst=True)  # before -m selection, so `pytest -m gpu` picks up vLLM gate tests
def pytest_collection_modifyitems(config, items):
    gate_items = [i for i in items if i.get_closest_marker("harness_gate")]
    if gate_items:
        state = config._harness
        backend = config.getoption("backend") or _config_backend(state)
        if backend == "vllm":
            for item in gate_items:
                item.add_marker(pytest.mark.gpu)
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if gpu_items and not _gpu_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU: none visible (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


def _config_backend(state) -> str | None:
    try:
        return state.cfg.backend
    except HarnessError:
        return None  # reported by the fixtures, with the message


def pytest_generate_tests(metafunc):
    if "harness_dataset" in metafunc.fixturenames:
        state = metafunc.config._harness
        try:
            names = list(state.cfg.datasets)
        except HarnessError as e:
            raise pytest.UsageError(str(e)) from None
        metafunc.parametrize("harness_dataset", names, scope="session")


@pytest.fixture(scope="session")
def harness_config(pytestconfig):
    """The validated gate config (--harness-config)."""
    try:
        return pytestconfig._harness.cfg
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None


@pytest.fixture(scope="session")
def harness_session(pytestconfig, harness_config):
    """The gate session for the chosen backend; writes the report at the end of the run."""
    state = pytestconfig._harness
    s = state.session()
    yield s
    state.finish(s)


@pytest.fixture(scope="session")
def quantized_checkpoint(harness_session):
    """Path of the quantized checkpoint (built once, then served from the content-addressed cache)."""
    return harness_session.checkpoint()[0]


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
