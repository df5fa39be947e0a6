"""The checkpoint cache's lock: one builder per entry, waiting with a timeout that names who holds it.

A ``filelock`` lock (``flock``: the kernel releases it when its holder dies, even by SIGKILL) plus a holder file
(pid, host, since, what). A waiter says every ``heartbeat_s`` who it waits for, gives up past ``timeout_s`` with that
holder in the error, and a holder file naming a dead process on this host is reported as stale and replaced.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from harness.atomic import atomic_write_text
from harness.errors import HarnessError


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(h: dict | None) -> str:
    if not h:
        return "an unknown process (no holder file)"
    here = h.get("host") == socket.gethostname()
    dead = here and isinstance(h.get("pid"), int) and not pid_alive(h["pid"])
    return (f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')} ({h.get('what')})"
            + (" - that process is gone: a stale holder file" if dead else ""))


HOLDER_GRACE_S = 10.0  # how long a holder may take between getting the lock and writing its holder file


def _wait_for_holder_file(lock, holder_path: Path) -> bool:
    """The holder takes the lock first and writes its holder file next, so a waiter can look in between (on a loaded
    machine for a while): give the file time to appear before calling the holder unknown. True if the lock came free
    (and is now held by us)."""
    deadline = time.time() + HOLDER_GRACE_S
    while not holder_path.exists() and time.time() < deadline:
        try:
            lock.acquire(timeout=0.1, poll_interval=0.05)
            return True
        except Timeout:
            pass
    return False


@contextmanager
def cache_lock(path: Path, what: str, timeout_s: float | None = None, heartbeat_s: float = 60.0, log=None):
    """Hold ``path`` (a ``.lock`` file) for ``what``; ``timeout_s`` None waits for good."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder_path = path.with_suffix(".holder.json")
    lock = FileLock(str(path))
    t0 = time.time()
    waited = 0
    while True:
        # the first try does not wait, so a waiter says at once for whom it waits; then every heartbeat_s
        step = 0 if waited == 0 else heartbeat_s
        if timeout_s is not None:
            step = min(step, max(timeout_s - (time.time() - t0), 0))
        try:
            lock.acquire(timeout=step, poll_interval=0.2)
            break
        except Timeout:
            waited += 1
            if _wait_for_holder_file(lock, holder_path):  # the lock came free meanwhile: ours
                break
            holder = describe_holder(read_holder(holder_path))
            if timeout_s is not None and time.time() - t0 >= timeout_s:
                raise HarnessError(f"gave up after {timeout_s:.0f} s waiting for the cache lock {path.name}, held by "
                                   f"{holder}. Wait for it, stop it, or raise quantize.lock_timeout_s.") from None
            if log:
                log(f"waiting for {holder} to finish with {path.stem} ({time.time() - t0:.0f} s so far)")
    try:
        old = read_holder(holder_path)
        if old and log:  # a holder file outlives only a holder that died holding the lock
            log(f"took the cache lock {path.stem} over from {describe_holder(old)}")
        atomic_write_text(holder_path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                   "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "what": what}))
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()
