"""Child processes that never outlive the harness: the quantization interpreter and the data-parallel engines.

An hour of 72B quantization left running by a killed parent costs a GPU-hour and 42 GB nobody uses. So a child
- is asked to die with its parent (Linux ``PR_SET_PDEATHSIG``: the kernel signals it when the parent dies, even by
  SIGKILL),
- runs in its own process group, and on that signal (or when a watchdog sees its parent gone) kills the whole group,
  so its own helpers (tokenizer or dataset workers) go too;
- is waited for with a timeout and a heartbeat (elapsed time and the last line of its log), and killed with its
  group when the parent stops waiting for any reason (timeout, Ctrl-C, an error).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError

PR_SET_PDEATHSIG = 1


HARNESS_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder that holds this very harness package


def child_pythonpath(*extra: str | None) -> str:
    """PYTHONPATH for a child interpreter that runs ``-m harness.<module>``: this harness first (an installed or
    another checkout's copy must not win), then ``extra``'s entries that are set."""
    return os.pathsep.join([HARNESS_ROOT, *[e for e in extra if e]])


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; False elsewhere)."""
    try:
        # not on every platform: inside the try
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig)) == 0
    except Exception:  # noqa: BLE001 - not Linux / no libc: the parent's own clean-up still stops the child
        return False


def _preexec() -> None:  # runs in the child between fork and exec
    set_parent_death_signal(signal.SIGTERM)


def guard_group(poll_s: float = 1.0) -> None:
    """In a child started by :func:`run_child`: when the parent goes (SIGTERM from the kernel, or the parent pid
    changing), kill this process's whole group at once."""
    if os.getpgid(0) != os.getpid():  # not started by run_child (e.g. by hand from a shell): leave the group be
        set_parent_death_signal(signal.SIGTERM)
        return
    parent = os.getppid()

    def kill_group(*_):
        try:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        finally:
            os._exit(137)

    signal.signal(signal.SIGTERM, kill_group)

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                kill_group()

    threading.Thread(target=watch, name="harness-parent-watch", daemon=True).start()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it leads one) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def last_line(path: Path, limit: int = 160) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").replace("\r", "\n").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return condense_bar(lines[-1])[:limit] if lines else ""


BAR = re.compile(r"^(?P<desc>.*?):?\s*(?P<pct>\d+)%\|.*?\|\s*(?P<done>\d+)/(?P<total>\d+)")


def condense_bar(line: str) -> str:
    """A tqdm bar as words ("Calibrating 30/64 (46%)"), so a heartbeat reads as one plain line."""
    m = BAR.match(line)
    if not m:
        return line
    desc = m["desc"].strip() or "progress"
    return f"{desc} {m['done']}/{m['total']} ({m['pct']}%)"


def run_child(cmd: list[str], env: dict, log_path: Path, what: str, timeout_s: float | None = None,
              heartbeat_s: float = 60.0, log: Callable[[str], None] = print, poll_s: float = 0.5,
              start: Callable[[], object] | None = None) -> int:
    """Run ``cmd`` with stdout+stderr to ``log_path``; return its exit code. Every ``heartbeat_s`` say how long it
    has run and its last log line; past ``timeout_s`` kill it and its group and raise. ``start``, where given, starts
    the same work another way and returns a Popen-like handle that writes ``log_path`` itself (a build forked by
    harness/quant/zygote.py), or None to run ``cmd`` after all."""
    t0 = time.time()
    proc = start() if start is not None else None
    if proc is None:
        with open(log_path, "w") as logf:  # the child writes through its own copy of the file
            proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_preexec)
    try:
        next_beat = t0 + heartbeat_s
        while proc.poll() is None:
            time.sleep(poll_s)
            now = time.time()
            if timeout_s is not None and now - t0 > timeout_s:
                kill_group(proc)
                raise HarnessError(
                    f"{what} ran past its timeout of {timeout_s:.0f} s and was stopped; log: {log_path}\n"
                    f"last line: {last_line(log_path)}\nRaise the timeout (quantize.timeout_s in the config) "
                    "if the model is that big, or look at the log for a hang.")
            if now >= next_beat:
                log(f"{what}: {now - t0:.0f} s so far; last: {last_line(log_path) or '(nothing logged yet)'}")
                next_beat = now + heartbeat_s
    except BaseException:
        kill_group(proc)  # Ctrl-C, timeout, any error: the child never runs on alone
        raise
    return proc.returncode
