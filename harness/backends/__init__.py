"""Backend registry. Backends import their heavy libraries only when instantiated."""
from __future__ import annotations

from harness.backends.base import Backend, DocResult, EngineSpec, check_results
from harness.errors import ConfigError, unknown_name

BACKENDS = {"hf": "harness.backends.hf:HFBackend", "vllm": "harness.backends.vllm:VLLMBackend"}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    return load_class(BACKENDS[name])


def load_class(path: str) -> type[Backend]:
    """A backend class from ``module:Class``."""
    import importlib

    mod, cls = path.split(":")
    return getattr(importlib.import_module(mod), cls)


def make_backend(name: str, spec: EngineSpec) -> Backend:
    """Start the backend ``name`` for ``spec``. vLLM with ``data_parallel_size > 1``: that many engines, one per GPU
    group, each in its own process (harness/backends/data_parallel.py)."""
    if name == "vllm":
        from harness.backends import data_parallel as dp

        size, per_engine = dp.parallel_sizes(spec.engine_kwargs)
        if size > 1:
            if spec.engine_kwargs.get("distributed_executor_backend") not in (None, "mp"):
                raise ConfigError("data_parallel_size > 1 runs one engine per GPU group on this host; it does not "
                                  "combine with distributed_executor_backend "
                                  f"{spec.engine_kwargs['distributed_executor_backend']!r} (use ray for tensor / "
                                  "pipeline parallelism across hosts, with data_parallel_size 1)")
            from harness.backends.gpu_memory import visible_gpus

            devices = dp.plan_devices(size, per_engine, visible_gpus())
            return dp.DataParallelBackend(spec, BACKENDS[name], size, devices)
    return backend_class(name)(spec)


__all__ = ["Backend", "DocResult", "EngineSpec", "BACKENDS", "backend_class", "check_results", "load_class", "make_backend"]
