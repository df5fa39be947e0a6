"""The prepare stage in a process of its own, started while this one starts the engine (issue 23, goal 3).

A cached gate on a GPU spends its first seconds on two independent things: loading the tokenizer and preparing the
datasets (transformers' import alone is seconds), and starting the vLLM engine (its import, the model load, the KV
cache). Threads would share one interpreter lock for most of the first; a spawned process runs it on another core.

    ahead = PrepareAhead(cfg, names)       # starts the process (spawn: a fresh interpreter, no CUDA state copied)
    ...                                    # start the engine here
    prepared, lines, seconds = ahead.result()   # waits; its error re-raised here

The prepared datasets come back pickled over a pipe (token ids: ~0.4 MB for the reference's 400 texts), with the
log lines the child wrote, stamped when it wrote them, and the seconds it took. ``close()`` stops it (an engine that
failed to start)."""
from __future__ import annotations

import multiprocessing as mp
import time

from harness.errors import HarnessError


def _child(cfg, names: list[str], conn) -> None:
    t0 = time.perf_counter()
    lines: list[str] = []
    try:
        from harness.prepare import load_tokenizer, prepare_dataset

        def log(msg: str) -> None:
            lines.append(f"[{time.strftime('%H:%M:%S')}] {msg}")

        tok = load_tokenizer(cfg)
        prepared = {n: prepare_dataset(cfg, n, tok, log) for n in names}
        conn.send(("ok", prepared, lines, time.perf_counter() - t0))
    except BaseException as e:  # noqa: BLE001 - the parent re-raises it (or says what it was)
        import traceback

        try:
            conn.send(("error", e, lines, time.perf_counter() - t0))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            conn.send(("error", HarnessError("".join(traceback.format_exception(e))[-2000:]), lines, 0.0))
    finally:
        conn.close()
    import os
    import sys
    from multiprocessing import util

    util._exit_function()  # what a forked child runs before os._exit: its semaphores (tqdm's lock) handed back
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # its answer is sent: no interpreter teardown (torch's takes seconds) for the parent to wait out


class PrepareAhead:
    def __init__(self, cfg, names: list[str]):
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(cfg, list(names), child_conn), daemon=True,
                                 name="harness-prepare")
        self._proc.start()
        child_conn.close()
        self.pid = self._proc.pid

    def result(self) -> tuple[dict, list[str], float]:
        """(prepared datasets by name, the child's log lines, its seconds); the child's error raised here."""
        try:
            what, value, lines, seconds = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise HarnessError(f"preparing the data in its own process failed: it ended (exit {self._proc.exitcode}) "
                               "without an answer; run with prepare_beside_engine: false to prepare in this "
                               "process and see the error") from None
        finally:
            self._conn.close()
        self._proc.join(5)
        if what == "error":
            value.child_log = lines  # what it had logged before the error
            raise value
        return value, lines, seconds

    def close(self) -> None:
        """Stop it without waiting for its answer (the gate stopped before it needed the data)."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._conn.close()
