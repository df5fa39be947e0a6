"""The prepare stage in a process of its own, started while this one starts the engine (issue 23, goal 3).

A cached gate spends its first seconds on two independent things: loading the tokenizer and preparing the datasets
(transformers' import alone is seconds), and starting the engine (vLLM's import, the model load, the KV cache).
Threads would share one interpreter lock for most of the first; another process runs it on another core.

    ahead = PrepareAhead(cfg, names)       # starts `python -m harness.stages.prepare_ahead`
    ...                                    # start the engine here
    prepared, lines, seconds = ahead.result()   # waits; its error re-raised here

It is a plain child interpreter, not a multiprocessing one: spawning re-runs the caller's main script, which a user's
script without an ``if __name__ == "__main__"`` guard does not survive. The config goes to its stdin, pickled; the
prepared datasets come back pickled on a pipe of its own (token ids: ~0.4 MB for the reference's 400 texts), with
the log lines it wrote, stamped when it wrote them, and the seconds it took; its stdout and stderr are the
harness's stderr. ``close()`` stops it (an engine that failed to start); it dies with the harness (the kernel's
parent-death signal on Linux)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing import util

from harness.childproc import child_pythonpath, set_parent_death_signal
from harness.errors import HarnessError
from harness.stages.prepare import load_tokenizer, prepare_dataset


class PrepareAhead:
    def __init__(self, cfg, names: list[str]):
        env = {**os.environ, "PYTHONPATH": child_pythonpath(os.environ.get("PYTHONPATH"))}
        read, write = os.pipe()
        # its output to fd 2 itself (a notebook's sys.stderr has no fileno())
        self._proc = subprocess.Popen([sys.executable, "-m", "harness.stages.prepare_ahead", str(write)], env=env,
                                      stdin=subprocess.PIPE, stdout=2, pass_fds=(write,))
        os.close(write)
        self._answer = os.fdopen(read, "rb")
        self.pid = self._proc.pid
        try:
            pickle.dump((cfg, list(names), os.getpid()), self._proc.stdin)
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it is gone already: result() says so

    def result(self) -> tuple[dict, list[str], float]:
        """(prepared datasets by name, the child's log lines, its seconds); the child's error raised here."""
        try:
            data = self._answer.read()
        finally:
            self._answer.close()
        rc = self._proc.wait()
        if not data:
            raise HarnessError(f"preparing the data in its own process (pid {self.pid}) failed: it ended (exit {rc}) "
                               "without an answer (its output is above); set prepare_beside_engine: false to "
                               "prepare in this process")
        what, value, lines, seconds = pickle.loads(data)
        if what == "error":
            value.child_log = lines  # what it had logged before the error
            raise value
        return value, lines, seconds

    def close(self) -> None:
        """Stop it without waiting for its answer (the gate stopped before it needed the data)."""
        if self._proc.poll() is None:
            self._proc.terminate()
        self._proc.wait()
        self._answer.close()


def main(argv: list[str]) -> int:
    """The child: read (config, dataset names, the harness's pid) from stdin, prepare, write the answer to the fd
    given as the argument."""
    cfg, names, parent = pickle.load(sys.stdin.buffer)
    set_parent_death_signal(signal.SIGTERM)  # it dies with the harness (a kill -9 of the gate leaves nothing behind)
    if os.getppid() != parent:  # the harness went before the line above
        return 1
    t0 = time.perf_counter()
    lines: list[str] = []
    try:
        def log(msg: str) -> None:
            lines.append(f"[{time.strftime('%H:%M:%S')}] {msg}")

        tok = load_tokenizer(cfg)
        answer = ("ok", {n: prepare_dataset(cfg, n, tok, log) for n in names}, lines, time.perf_counter() - t0)
    except BaseException as e:  # noqa: BLE001 - the parent re-raises it (or says what it was)
        answer = ("error", e, lines, time.perf_counter() - t0)
    try:
        data = pickle.dumps(answer)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
        data = pickle.dumps(("error", HarnessError("".join(traceback.format_exception(answer[1]))[-2000:]), lines, 0.0))
    with os.fdopen(int(argv[0]), "wb") as out:
        out.write(data)

    util._exit_function()  # semaphores a library made (tqdm's lock) handed back, as a process ending normally does
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # its answer is sent: no interpreter teardown (torch's takes seconds) for the parent to wait out


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
