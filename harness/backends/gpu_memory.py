"""Device memory as NVML sees it (every process on the GPU, the engine-core and workers included, and no CUDA context
made here), and waiting for an engine's memory to come back after it is closed. No torch import."""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (unset: every GPU NVML sees; no CUDA
    context is made here, so spawned engines still choose their own)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(len(total_gib()))]


def visible_indices() -> list[int] | None:
    """NVML indices of this process's GPUs; None: all of them (CUDA_VISIBLE_DEVICES unset, or given as UUIDs)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        return None
    try:
        return [int(d) for d in visible_gpus()]
    except ValueError:
        return None


def _memory_mib(field: str, indices: Sequence[int] | None) -> dict[int, float] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver or no pynvml: nothing to measure
        return None
    try:
        idx = list(indices) if indices is not None else list(range(pynvml.nvmlDeviceGetCount()))
        return {i: getattr(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)), field) / 2**20
                for i in idx}
    except Exception:  # noqa: BLE001
        return None
    finally:
        pynvml.nvmlShutdown()


def used_mib(indices: Sequence[int] | None = None) -> dict[int, float] | None:
    """Used memory per GPU in MiB, or None without NVML."""
    return _memory_mib("used", indices)


def total_gib() -> list[float]:
    """Each GPU's memory in GiB (all of the host's; empty without a driver)."""
    return [v / 1024 for v in (_memory_mib("total", None) or {}).values()]


def wait_released(before: dict[int, float] | None, read: Callable[[], dict[int, float] | None],
                  timeout_s: float = 120.0, tolerance_mib: float = 1024.0, poll_s: float = 0.5) -> dict | None:
    """Block until every GPU uses at most what it used before the engine (+ ``tolerance_mib``); return None when
    released (or nothing to measure), else what is still held after ``timeout_s``: {gpu: extra MiB}."""
    if not before:
        return None
    deadline = time.time() + timeout_s
    while True:
        now = read()
        if not now:
            return None
        held = {i: round(now[i] - before.get(i, 0.0)) for i in now if now[i] - before.get(i, 0.0) > tolerance_mib}
        if not held or time.time() >= deadline:
            return held or None
        time.sleep(poll_s)


def wait_closed(what: str, before: dict[int, float] | None, indices: Sequence[int] | None, own_process: bool,
                timeout_s: float = 120.0) -> dict | None:
    """After an engine closed: with processes of its own (engine core, workers), wait until they gave its GPU memory
    back, so the next engine never starts beside their remains, and warn when they did not. Without (its core and
    model ran in this process), what is still held is this process's own (its CUDA context, caches vLLM's modules
    keep) and stays until it exits: waiting would only wait out the timeout, so it is read once and logged."""
    held = wait_released(before, lambda: used_mib(indices), timeout_s=timeout_s if own_process else 0.0)
    if held and own_process:
        logging.getLogger("harness").warning("%s was closed but GPU memory is still held after %.0f s (MiB per GPU: "
                                             "%s); the next engine may not fit", what, timeout_s, held)
    elif held:
        logging.getLogger("harness").info("%s ran in this process, which keeps %s MiB per GPU of it until it exits",
                                          what, held)
    return held
