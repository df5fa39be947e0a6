"""A warm quantization interpreter: it imports llm-compressor once and forks one process per build.

Importing llm-compressor takes ~10 s on two CPU cores (torch, transformers, compressed-tensors), about half of a
small model's build; a session that builds several checkpoints (``harness compare``, the test suite) paid it once
per build. The zygote is the quantization interpreter started once, as ``python -m harness.quant.zygote``, with the
same environment the child would get; it imports what a build needs, then, for each build, forks a process that
runs exactly what ``python -m harness.quant.quantize --spec`` runs. Each build is still a process of its own, in its own
process group, with its own log, that dies with the harness (harness/childproc.py); the parent waits for it,
heart-beats and stops it as before, through ``harness.quant.zygote_client.Forked``, which looks like a
``subprocess.Popen`` to ``run_child``.

It is used only where forking is safe: on Linux without a visible NVIDIA GPU. The CUDA runtime cannot be used in
a process forked after it was initialised, and importing llm-compressor asks torch for devices; with GPUs each build
is a fresh interpreter, as before (and there the import is seconds against minutes of building). An interpreter
that cannot serve (not a Python with llm-compressor, a test double) is simply run once per build: the zygote says
so by exiting before it is ready, and the build then runs as a plain child, whose log shows any real error.

Protocol, one line each: the parent writes ``{"spec": ..., "log": ..., "env": {...}, "cwd": ...}`` on the zygote's
stdin; the zygote answers ``ready``, then ``started PID`` and later ``exit PID RC`` (RC negative: killed by that
signal) on a pipe of its own (its stdout and stderr go to its log, as imports print). End of its stdin (the harness
closed it, or died) stops the zygote and kills the builds it still runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import signal
import sys
import threading
import traceback

from harness.childproc import set_parent_death_signal
from harness.quant.zygote_client import gpu_visible

PRELOAD = ("torch", "datasets", "transformers", "compressed_tensors", "llmcompressor", "harness.quant.quantize",
           "harness.data.rules")


# ---- the zygote (runs in the quantization interpreter) -------------------------------------------------------------
def serve() -> int:
    proto = os.dup(1)  # the protocol's pipe; fd 1 then goes where fd 2 goes (the zygote's log): imports print
    os.dup2(2, 1)
    if gpu_visible():
        print("harness.quant.zygote: a GPU is visible, and CUDA cannot be used after a fork: not serving", flush=True)
        return 3

    parent = os.getppid()
    importing = threading.Event()

    def watch_parent():  # while importing (seconds) nothing reads stdin: the parent's death is seen here
        while not importing.wait(0.2):
            if os.getppid() != parent:
                os._exit(0)

    watcher = threading.Thread(target=watch_parent, daemon=True)
    watcher.start()
    for name in PRELOAD:
        importlib.import_module(name)
    importing.set()
    watcher.join()  # no thread but this one from here on: fork() copies only the caller

    def say(line: str) -> None:
        os.write(proto, (line + "\n").encode())

    live: set[int] = set()
    say("ready")
    buf = b""
    while True:
        while live:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            live.discard(pid)
            say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")
        if not select.select([0], [], [], 0.2)[0] and os.getppid() == parent:
            continue
        chunk = os.read(0, 65536) if os.getppid() == parent else b""
        if not chunk:  # the harness closed our stdin, or is gone: so are the builds
            for pid in live:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            pid = os.fork()
            if pid == 0:
                os.close(proto)
                os._exit(_build(json.loads(line), zygote=os.getppid()))
            live.add(pid)
            say(f"started {pid}")


def _build(req: dict, zygote: int) -> int:
    """In the forked process: become what ``python -m harness.quant.quantize --spec`` would be, run it, return its code."""
    try:
        os.setsid()  # its own process group, as run_child gives a plain child
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != zygote:  # the zygote went between the fork and the line above
            return 137
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        for src, dst in ((null, 0), (fd, 1), (fd, 2)):
            os.dup2(src, dst)
        os.close(fd)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        sys.argv = ["harness.quant.quantize", "--spec", req["spec"]]
        # after the request's environment and argv are in place: quantize reads them at import
        from harness.quant.quantize import main

        return int(main(sys.argv[1:]) or 0)
    except SystemExit as e:  # as Python exits on it: None is 0, a message is 1
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a Python: the traceback, exit 1
        traceback.print_exc()
        return 1
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001 - nothing left to tell
                pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.quant.zygote",
                                description="A warm quantization interpreter (started by the harness; not by hand).")
    p.add_argument("--cache", default="", help="the harness cache it builds for (shown in ps; not used)")
    p.parse_args(argv)
    return serve()


if __name__ == "__main__":
    raise SystemExit(main())
