"""Backend registry: everything the harness knows about a backend, in one place. A new backend is one module and
one line here. Backends import their heavy libraries only when instantiated."""
from __future__ import annotations

from dataclasses import dataclass

from harness.backends.base import Backend, DocResult, EngineSpec, check_results, load_class
from harness.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class BackendSpec:
    name: str
    cls: str                        # "module:Class", imported when an engine starts
    check_kwargs: str               # "module:function(kwargs, where, fields=None)": its engine settings, at config load
    needs_gpu: bool                 # its gate tests are GPU tests (marker gpu; skipped cleanly without one)
    extra: str                      # the package extra that installs it
    modules: tuple[str, ...]        # the libraries it imports: checked before any work (harness/preflight.py)
    data_parallel: bool = False     # data_parallel_size > 1 runs one engine per GPU group (data_parallel.py)
    refuse_scheme: str | None = None  # "module:function(scheme) -> why not | None": schemes it has no kernel for


BACKENDS: dict[str, BackendSpec] = {b.name: b for b in (
    BackendSpec("hf", "harness.backends.hf:HFBackend", "harness.backends.engine_args:check_hf_kwargs",
                needs_gpu=False, extra="hf", modules=("torch", "transformers")),
    BackendSpec("vllm", "harness.backends.vllm:VLLMBackend", "harness.backends.engine_args:check_vllm_kwargs",
                needs_gpu=True, extra="vllm", modules=("vllm",), data_parallel=True,
                refuse_scheme="harness.checkpoint:vllm_refusal"),
)}


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    return BACKENDS[name]


def backend_class(name: str) -> type[Backend]:
    return load_class(backend_spec(name).cls)


def make_backend(name: str, spec: EngineSpec) -> Backend:
    """Start the backend ``name`` for ``spec``. vLLM with ``data_parallel_size > 1``: that many engines, one per GPU
    group, each in its own process (harness/backends/data_parallel.py)."""
    b = backend_spec(name)
    if b.data_parallel:
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
            return dp.DataParallelBackend(spec, b.cls, size, devices)
    return backend_class(name)(spec)


__all__ = ["Backend", "BackendSpec", "DocResult", "EngineSpec", "BACKENDS", "backend_class", "backend_spec",
           "check_results", "load_class", "make_backend"]
