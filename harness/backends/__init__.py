"""Backend registry. Backends import their heavy libraries only when instantiated."""
from __future__ import annotations

from harness.backends.base import Backend, DocResult, EngineSpec, check_results
from harness.errors import unknown_name

BACKENDS = {"hf": "harness.backends.hf:HFBackend", "vllm": "harness.backends.vllm:VLLMBackend"}


def backend_class(name: str) -> type[Backend]:
    import importlib

    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    mod, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


__all__ = ["Backend", "DocResult", "EngineSpec", "BACKENDS", "backend_class", "check_results"]
