"""Scenarios whose slow part is another process's start-up: a fresh `harness gate` imports torch and llm-compressor
(~20 s of one core on a 2-core machine) before there is a build to interrupt. conftest.py starts the selected ones in
one background thread as the run begins, beside the first tests; the test that asserts on a scenario waits for its
observations (`result`), or runs it then where it was not started (the test run alone, an xdist worker)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from quant_procs import quantizing, wait_gone

ROOT = Path(__file__).resolve().parent.parent
# `python -m harness.cli.main`, with SIGINT delivered as a terminal delivers it even when the suite runs in the background
# (where a shell hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt)
CLI_WITH_SIGINT = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "runpy.run_module('harness.cli.main', run_name='__main__', alter_sys=True)")

_pool: ThreadPoolExecutor | None = None
_started: dict[str, Future] = {}
_dirs: list[str] = []


def _env(cache: Path, test: str, **more) -> dict:
    """The environment of a scenario's gate: its own cache; the ledger's entry named after the test that asserts on
    it (not whichever test the main thread runs meanwhile)."""
    return {**os.environ, "HARNESS_CACHE": str(cache), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "PYTEST_CURRENT_TEST": f"{test} (early)", **more}


def _tmp(name: str) -> Path:
    _dirs.append(tempfile.mkdtemp(prefix=f"harness-early-{name}-"))
    return Path(_dirs[-1])


def _until_quantizing(gate: subprocess.Popen, cache: Path, need_build: bool) -> tuple[list[int], int | None]:
    """Poll until the gate's quantization processes (and, with need_build, the build among them) are there."""
    deadline, procs, build = time.time() + 120, [], None
    while (build if need_build else procs) in (None, []) and time.time() < deadline and gate.poll() is None:
        procs, build = quantizing(cache)
        time.sleep(0.1)
    return procs, build


def killed_while_quantizing() -> dict:
    """tests/test_faults.py: SIGKILL a `harness gate` (the tiny default, a cache of its own) while its build, forked
    by the warm quantization interpreter, runs; what was running then, and what outlived the kill."""
    tmp = _tmp("killed")
    cache = tmp / "cache"
    env = _env(cache, "tests/test_faults.py::test_a_gate_killed_while_quantizing_leaves_nothing_that_lasts",
               HARNESS_QUANT_ZYGOTE="1")
    gate = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "gate", "--config", str(ROOT / "configs/tiny.yaml"),
                             "--report-dir", str(tmp / "reports")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    procs, build = [], None
    try:
        procs, build = _until_quantizing(gate, cache, need_build=True)
        if build:
            time.sleep(1.0)  # well inside llm-compressor's work
    finally:
        gate.send_signal(signal.SIGKILL)
        gate.wait()
    outlived = wait_gone(procs)
    ckpts = cache / "checkpoints"
    return {"cache": cache, "procs": procs, "build": build, "outlived": outlived,
            "left": sorted(p.name for p in ckpts.iterdir()) if ckpts.exists() else []}


def interrupted(sig: int, during: str, test: str) -> dict:
    """tests/test_failures.py: `harness gate` on the tiny default (a cache of its own) sent ``sig`` while
    llm-compressor builds (``during`` "build") or while the quantization interpreter still imports ("import")."""
    tmp = _tmp(f"{during}")
    cache, reports = tmp / "cache", tmp / "reports"
    env = _env(cache, test)
    p = subprocess.Popen([sys.executable, "-c", CLI_WITH_SIGINT, "gate", "--report-dir", str(reports)], env=env,
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        procs, build = _until_quantizing(p, cache, need_build=during == "build")
    except BaseException:
        p.kill()
        p.communicate()
        raise
    if not procs or (during == "build" and not build):
        p.kill()
        _, err = p.communicate()
        return {"started": False, "procs": procs, "build": build, "stderr": err[-3000:]}
    time.sleep(1)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    time.sleep(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return {"started": True, "returncode": p.returncode, "stderr": err, "reports": reports, "cache": cache,
            "procs": procs, "orphan_in_ps": str(cache) in ps,
            "procs_left": [pid for pid in procs if Path(f"/proc/{pid}").exists()]}


_CTRL_C = "tests/test_failures.py::test_ctrl_c_and_a_ci_cancel_leave_no_half_report_no_cache_entry_and_no_orphan"
SCENARIOS = {"killed-while-quantizing": killed_while_quantizing,
             "SIGINT-build": lambda: interrupted(signal.SIGINT, "build", f"{_CTRL_C}[SIGINT-build]"),
             "SIGTERM-import": lambda: interrupted(signal.SIGTERM, "import", f"{_CTRL_C}[SIGTERM-import]")}


def start(names) -> None:
    """Run these scenarios one after another in a background thread (one at a time: two cores)."""
    global _pool
    names = [n for n in names if n not in _started]
    if not names:
        return
    _pool = _pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-early")
    for n in names:
        _started[n] = _pool.submit(SCENARIOS[n])


def result(name: str) -> dict:
    """The scenario's observations: from the background run if one was started, else run now."""
    f = _started.pop(name, None)
    return f.result(timeout=600) if f is not None else SCENARIOS[name]()


def stop() -> None:
    """At the run's end: scenarios not yet started are dropped, a running one is waited for (its own deadlines bound
    it), and their folders go."""
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)
