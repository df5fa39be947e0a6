"""Data-parallel scoring: N engines, each in its own process on its own GPUs, score N shards of the documents at once.

vLLM 0.26 refuses ``LLM(data_parallel_size>1)`` outside an external launcher, and for a dense model that fits one
GPU (or one tensor/pipeline-parallel group) independent engines are all data parallelism needs. So the harness owns
``data_parallel_size`` in ``model.engine.<precision>.vllm``:

- the visible GPUs (``CUDA_VISIBLE_DEVICES``, else all) are cut into ``data_parallel_size`` groups of
  ``tensor_parallel_size x pipeline_parallel_size`` GPUs; too few GPUs is an error before anything starts;
- each group gets a worker process (spawned; it dies with its parent) that sets ``CUDA_VISIBLE_DEVICES`` to its group
  and starts the inner backend with the other kwargs; all engines start at once;
- documents are shared out by length (longest first, each to the least-loaded shard), so shards take about the same
  time; each shard keeps document order, and the results merge back into exactly the documents' order, so the
  numbers downstream are those of one engine (per-document sums do not depend on which engine scored them, up to the
  kernels' own batch-to-batch rounding);
- a worker that fails to start or dies while scoring stops all of them, with its error and GPUs in the message.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
import traceback
from typing import Sequence

from harness.backends.base import Backend, DocResult, EngineSpec, check_results, load_class
from harness.backends.gpu_memory import used_mib, wait_closed
from harness.childproc import set_parent_death_signal
from harness.errors import BackendError, ConfigError

OWNED_KEY = "data_parallel_size"
CLOSE_TIMEOUT_S = 120.0  # for the workers to close their engines
EXIT_GRACE_S = 15.0  # then for each to exit before it is stopped (2026-11-30: exits had waited out the whole 120 s)


def parallel_sizes(kwargs: dict) -> tuple[int, int]:
    """(data_parallel_size, GPUs per engine = tensor x pipeline parallel) of these vLLM engine kwargs."""
    def size(key: str) -> int:
        v = kwargs.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model.engine.<precision>.vllm.{key} must be a whole number >= 1, got {v!r}")
        return v

    return size(OWNED_KEY), size("tensor_parallel_size") * size("pipeline_parallel_size")


def plan_devices(dp: int, per_engine: int, visible: Sequence[str]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` for each of the ``dp`` engines: consecutive groups of ``per_engine`` GPUs."""
    need = dp * per_engine
    if need > len(visible):
        raise ConfigError(
            f"data_parallel_size {dp} x {per_engine} GPU(s) per engine (tensor_parallel_size x pipeline_parallel_size) "
            f"needs {need} GPUs, but {len(visible)} are visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}: {', '.join(visible) or 'none'}). Lower "
            "data_parallel_size or the per-engine parallelism, or make more GPUs visible.")
    return [",".join(visible[i * per_engine:(i + 1) * per_engine]) for i in range(dp)]


def shard(lengths: Sequence[int], n: int) -> list[list[int]]:
    """Document indices for ``n`` shards of about equal token count (longest first to the least-loaded shard);
    each shard in document order. Deterministic: ties go to the lowest shard."""
    load = [0] * n
    shards: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = min(range(n), key=lambda k: (load[k], k))
        shards[k].append(i)
        load[k] += lengths[i]
    return [sorted(s) for s in shards]


def merge(n_docs: int, shards: Sequence[Sequence[int]], results: Sequence[Sequence[DocResult]]) -> list[DocResult]:
    """Per-shard results back into document order; every document exactly once."""
    out: list[DocResult | None] = [None] * n_docs
    for idx, res in zip(shards, results):
        if len(idx) != len(res):
            raise BackendError(f"data parallel: a shard of {len(idx)} documents returned {len(res)} results")
        for i, r in zip(idx, res):
            if out[i] is not None:
                raise BackendError(f"data parallel: document {i} was scored twice")
            out[i] = r
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise BackendError(f"data parallel: documents {missing[:10]} were not scored")
    return out  # type: ignore[return-value]


def _worker(inner: str, spec: EngineSpec, devices: str, conn) -> None:
    set_parent_death_signal()  # the harness dies (even by SIGKILL): so does this engine
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        eng = load_class(inner)(spec)
        conn.send(("ready", eng.info()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops every worker
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()[-3000:]))
        return
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            _, docs, keep, top_k = msg
            try:
                conn.send(("ok", eng.loglikelihood_rolling(docs, token_logprobs=keep, top_k=top_k)))
            except BaseException as e:  # noqa: BLE001
                conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()[-3000:]))
    finally:
        eng.close()
        try:
            conn.send(("closed",))
        except (OSError, EOFError):
            pass


class DataParallelBackend(Backend):
    """``size`` copies of the ``inner`` backend (``module:Class``), one per GPU group, behind one Backend."""

    reports_progress = False  # each worker's engine draws its own bar

    def __init__(self, spec: EngineSpec, inner: str, size: int, devices: Sequence[str]):
        super().__init__(spec)
        self.name = getattr(load_class(inner), "name", "backend")
        self.size, self.devices = size, list(devices)
        inner_spec = EngineSpec(**{**spec.__dict__, "engine_kwargs": {k: v for k, v in spec.engine_kwargs.items()
                                                                       if k != OWNED_KEY}})

        try:  # NVML indices of every worker's GPUs (UUIDs: all GPUs), read before any engine starts
            self._gpu_indices: list[int] | None = [int(g) for d in self.devices for g in d.split(",")]
        except ValueError:
            self._gpu_indices = None
        self._mem_before = used_mib(self._gpu_indices)
        ctx = mp.get_context("spawn")  # a fresh interpreter per engine: CUDA never initialised before the env is set
        self._procs, self._conns = [], []
        t0 = time.time()
        for dev in self.devices:
            parent, child = ctx.Pipe()
            # not a daemon: the inner engine starts processes of its own
            p = ctx.Process(target=_worker, args=(inner, inner_spec, dev, child), name=f"harness-dp-{dev}")
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        self.infos: list[dict] = []
        try:
            for k in range(size):
                self.infos.append(self._recv(k, "ready")[1])
        except BaseException:
            self.close()
            raise
        self.engine_start_s = time.time() - t0
        self._check_same_kernel()

    def _recv(self, k: int, want: str):
        conn, p = self._conns[k], self._procs[k]
        while not conn.poll(1.0):
            if not p.is_alive():
                raise BackendError(f"data-parallel engine {k} (GPUs {self.devices[k]}) died with exit code "
                                   f"{p.exitcode} before answering; its log is above")
        try:
            msg = conn.recv()
        except EOFError:  # the worker is gone
            p.join(timeout=10)
            raise BackendError(f"data-parallel engine {k} (GPUs {self.devices[k]}) died with exit code "
                               f"{p.exitcode} before answering; its log is above") from None
        if msg[0] == "error":
            raise BackendError(f"data-parallel engine {k} of {self.size} (GPUs {self.devices[k]}): {msg[1]}\n"
                               f"{msg[2]}")
        if msg[0] != want:
            raise BackendError(f"data-parallel engine {k}: expected {want!r}, got {msg[0]!r}")
        return msg

    def _check_same_kernel(self) -> None:
        kernels = {i.get("kernel") for i in self.infos}
        if len(kernels) > 1:
            self.close()
            raise BackendError(f"data-parallel engines ran different kernels ({sorted(map(str, kernels))}): their "
                               f"GPUs ({self.devices}) differ; make only GPUs of one kind visible")

    def loglikelihood_rolling(self, docs: Sequence[Sequence[int]], progress=None,
                              token_logprobs: bool = False, top_k: int = 0) -> list[DocResult]:
        if getattr(self, "_conns", None) is None:
            raise BackendError("data-parallel backend is closed")
        shards = shard([len(d) for d in docs], self.size)
        try:
            for conn, idx in zip(self._conns, shards):
                conn.send(("score", [list(docs[i]) for i in idx], token_logprobs, top_k))
            answers = [self._recv(k, "ok") for k in range(self.size)]
        except BaseException:
            self.close()
            raise
        if progress:
            progress(len(docs), len(docs))
        return check_results(merge(len(docs), shards, [a[1] for a in answers]), docs, self.name)

    def info(self) -> dict:
        first = dict(self.infos[0])
        first["engine_start_s"] = round(self.engine_start_s, 2)
        first["engine_kwargs"] = dict(self.spec.engine_kwargs)
        first["data_parallel"] = {"size": self.size, "devices": self.devices,
                                  "engine_start_s": [i.get("engine_start_s") for i in self.infos],
                                  "device_names": [i.get("device") for i in self.infos]}
        return first

    def close(self) -> None:
        conns, procs = getattr(self, "_conns", None), getattr(self, "_procs", [])
        if conns is None:
            return
        self._conns = None
        for c, p in zip(conns, procs):
            if p.is_alive():
                try:
                    c.send(("close",))
                except (OSError, BrokenPipeError):
                    pass
        deadline = time.time() + CLOSE_TIMEOUT_S  # each worker closes its engine, says so, then exits
        for c, p in zip(conns, procs):
            _wait_worker_closed(c, p, deadline)
            p.join(timeout=EXIT_GRACE_S)
            if p.is_alive():
                logging.getLogger("harness").warning("data-parallel engine on GPUs %s did not exit within %.0f s of "
                                                     "closing; stopped", p.name.removeprefix("harness-dp-"),
                                                     EXIT_GRACE_S)
                p.terminate()
                p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()
        self.exitcodes = [p.exitcode for p in procs]  # 0: each worker closed its engine and exited on its own

        # the workers' engines ran in their processes: their GPU memory comes back as those exit
        wait_closed("the data-parallel engines", getattr(self, "_mem_before", None), self._gpu_indices,
                    own_process=True, timeout_s=CLOSE_TIMEOUT_S)


def _wait_worker_closed(conn, proc, deadline: float) -> None:
    """Until the worker said its engine is closed (answers still in the pipe are dropped), exited, or the deadline."""
    while time.time() < deadline:
        try:
            if conn.poll(0.5):
                if conn.recv()[0] == "closed":
                    return
            elif not proc.is_alive():
                return
        except (EOFError, OSError):
            return
