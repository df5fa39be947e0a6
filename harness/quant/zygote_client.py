"""The harness's side of the warm quantization interpreter (harness/quant/zygote.py): start it once per interpreter
and environment, ask it to fork a build, and wait for that build as ``run_child`` waits for a ``subprocess.Popen``
(:class:`Forked`). Used only where forking is safe: on Linux without a visible NVIDIA GPU (the CUDA runtime cannot be
used in a process forked after it was initialised). ``HARNESS_QUANT_ZYGOTE=0`` switches it off; an interpreter
that cannot serve is run once per build."""
from __future__ import annotations

import atexit
import glob
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

# what may differ between two builds of one zygote: each build gets the requester's whole environment anyway, and
# none of these is read when a module is imported
PER_BUILD_ENV = ("PYTEST_CURRENT_TEST", "HARNESS_CACHE", "HARNESS_QUANT_LEDGER", "OLDPWD", "PWD",
                 "TORCHINDUCTOR_CACHE_DIR",  # set by torch in the harness once it compiles anything
                 # set by scikit-learn, joblib and threadpoolctl when the harness imports them (lm-eval's metrics do):
                 # read by Intel's OpenMP runtime only, and torch's wheels bring GNU's (libgomp)
                 "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK",
                 # set by the vLLM backend when it starts an engine of several GPUs (backends/vllm.py MULTICAST_OFF):
                 # read by NCCL and torch's symmetric memory when they initialise, never at import
                 "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                 "VLLM_ALLREDUCE_USE_SYMM_MEM")
ENV_SWITCH = "HARNESS_QUANT_ZYGOTE"  # "0": every build a fresh interpreter
KEEP = 2  # warm interpreters kept at most (each holds ~0.6 GB): the quantization interpreter and one other


def gpu_visible() -> bool:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


class ZygoteGone(Exception):
    """The zygote exited (or never got ready): the build runs as a plain child."""


class Forked:
    """A build forked by a zygote, as ``run_child`` uses a ``subprocess.Popen``: ``pid`` (it leads its process group,
    so ``os.killpg(pid, ...)`` stops it with its helpers), ``poll()``, ``wait()``, ``returncode``."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None
        self.done = threading.Event()

    def poll(self):
        return self.returncode

    def wait(self, timeout: float | None = None):
        if not self.done.wait(timeout):
            raise subprocess.TimeoutExpired(f"build {self.pid}", timeout)
        return self.returncode

    def _ended(self, rc: int) -> None:
        self.returncode = rc
        self.done.set()


class Zygote:
    def __init__(self, python: str, env: dict, log_path: Path):
        with open(log_path, "w") as logf:
            cmd = [python, "-m", "harness.quant.zygote", "--cache", env.get("HARNESS_CACHE", "")]
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                         start_new_session=True)
        self.ready = threading.Event()  # set when it is ready, or gone
        self.was_ready = False
        self.cond = threading.Condition()
        self.started: list[int] = []
        self.builds: dict[int, Forked] = {}
        self.write_lock = threading.Lock()
        threading.Thread(target=self._read, name="harness-quant-zygote", daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            word, *rest = raw.decode().split()
            if word == "ready":
                self.was_ready = True
                self.ready.set()
            elif word == "started":
                with self.cond:
                    pid = int(rest[0])
                    self.builds[pid] = Forked(pid)
                    self.started.append(pid)
                    self.cond.notify_all()
            elif word == "exit":
                with self.cond:
                    b = self.builds.get(int(rest[0]))
                if b is not None:
                    b._ended(int(rest[1]))
        self.proc.wait()  # the zygote is gone, and its builds with it (they die with their parent)
        with self.cond:
            left = [b for b in self.builds.values() if b.returncode is None]
            self.cond.notify_all()
        for b in left:
            b._ended(-signal.SIGKILL)
        self.ready.set()

    def busy(self) -> bool:
        with self.cond:
            return any(b.returncode is None for b in self.builds.values())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, spec_path: Path, log_path: Path, env: dict) -> Forked:
        """Fork one build; ZygoteGone when the zygote exited before it was ready, or while asked."""
        while not self.ready.wait(0.2):  # waits while it imports, and Ctrl-C still interrupts
            pass
        req = json.dumps({"spec": str(spec_path), "log": str(log_path), "env": env, "cwd": os.getcwd()})
        with self.write_lock, self.cond:
            n = len(self.started)
            try:
                self.proc.stdin.write((req + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise ZygoteGone() from None
            while len(self.started) == n:
                if self.proc.poll() is not None:
                    raise ZygoteGone()
                self.cond.wait(0.2)
            return self.builds[self.started[n]]

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop it: a ready zygote kills the builds it still runs and exits when its stdin closes; one still importing
        is killed (nothing of it to keep)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout_s if self.was_ready else 0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()


_zygotes: dict[tuple, Zygote] = {}  # by interpreter and environment, least recently used first
_count = itertools.count()
_refused: set[tuple] = set()  # interpreters whose zygote exited before it was ready: run once per build
_zlock = threading.Lock()


def enabled() -> bool:
    """Linux only (forking after importing torch is what PyTorch's DataLoader does there by default; macOS's system
    frameworks are not fork-safe), no GPU visible, not switched off."""
    return sys.platform.startswith("linux") and os.environ.get(ENV_SWITCH, "1") != "0" and not gpu_visible()


def _key(python: str, env: dict) -> tuple:
    return (python, tuple(sorted((k, v) for k, v in env.items() if k not in PER_BUILD_ENV)))


def _warm(key: tuple, python: str, env: dict, log_dir: Path) -> Zygote | None:
    """This interpreter's and environment's zygote, started now if it is not running; None where it cannot serve.
    Called with _zlock held."""
    if key in _refused:
        return None
    z = _zygotes.pop(key, None)  # re-inserted below: the dict's order is the order of last use
    if z is None or not z.alive():
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            z = Zygote(python, env, log_dir / f"quant-zygote-{os.getpid()}-{next(_count)}.log")
        except OSError:  # no such interpreter: the plain child says so (and no warm one was closed for it)
            _refused.add(key)
            return None
        idle = [k for k, old in _zygotes.items() if not old.busy()]
        for k in idle[:max(0, len(_zygotes) + 1 - KEEP)]:  # the least recently used go first
            _zygotes.pop(k).close()
    _zygotes[key] = z
    return z


def prestart(python: str, env: dict, log_dir: Path) -> bool:
    """Start the zygote a build will fork from now, so that its import overlaps what the caller does next (the
    gate prepares its data meanwhile). False where none will serve."""
    if not enabled():
        return False
    with _zlock:
        return _warm(_key(python, env), python, env, log_dir) is not None


def spawner(python: str, env: dict, spec_path: Path, log_path: Path):
    """For run_child: a function that forks the build from this interpreter's zygote (started on first use), or
    returns None where the build should be a plain child (switched off, a GPU visible, the interpreter cannot
    serve)."""
    if not enabled():
        return None
    key = _key(python, env)

    def start():
        with _zlock:
            z = _warm(key, python, env, log_path.parent)
        if z is None:
            return None
        try:
            return z.spawn(spec_path, log_path, env)
        except ZygoteGone:
            with _zlock:
                if _zygotes.get(key) is z:
                    del _zygotes[key]
                if not z.was_ready:
                    _refused.add(key)
            return None

    return start


@atexit.register
def close_all() -> None:
    with _zlock:
        zs = list(_zygotes.values())
        _zygotes.clear()
    for z in zs:
        z.close()


