"""Backend registry: everything the harness knows about a backend, in one place (its ``BackendSpec``). Backends are
found through the entry-point group ``harness.backends`` (as pytest finds plugins through ``pytest11``), read on first
use: the built-ins are registered there by this package's pyproject.toml, and another package adds a backend with one
entry point naming its spec. A checkout used from PYTHONPATH without being installed (no entry points) still has
the built-ins. Backends import their heavy libraries only when instantiated."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass

from harness.backends.base import Backend, DocResult, EngineSpec, check_results, load_class
from harness.errors import ConfigError, HarnessError, unknown_name

GROUP = "harness.backends"  # the entry-point group


@dataclass(frozen=True)
class BackendSpec:
    name: str
    cls: str                        # "module:Class", imported when an engine starts
    check_kwargs: str               # "module:function(kwargs, where, fields=None)": its engine settings, at config load
    needs_gpu: bool                 # its gate tests are GPU tests (marker gpu; skipped cleanly without one)
    extra: str                      # this package's extra that installs its libraries ("" for an outside backend)
    modules: tuple[str, ...]        # the libraries it imports: checked before any work (harness/stages/preflight.py)
    data_parallel: bool = False     # data_parallel_size > 1 runs one engine per GPU group (data_parallel.py)
    refuse_scheme: str | None = None  # "module:function(scheme) -> why not | None": schemes it has no kernel for
    install: str = ""               # how to install its libraries, where ``extra`` does not say it

    def install_hint(self) -> str:
        return self.install or f"pip install 'nvfp4-gate[{self.extra}]'"

    def missing(self) -> list[str]:
        """The libraries it imports that this environment lacks."""
        return [m for m in self.modules if not _installed(m)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported already without a spec (a stand-in module): there
        return True


HF = BackendSpec("hf", "harness.backends.hf:HFBackend", "harness.backends.engine_args:check_hf_kwargs",
                 needs_gpu=False, extra="hf", modules=("torch", "transformers", "compressed_tensors"))
VLLM = BackendSpec("vllm", "harness.backends.vllm:VLLMBackend", "harness.backends.engine_args:check_vllm_kwargs",
                   needs_gpu=True, extra="vllm", modules=("vllm",), data_parallel=True,
                   refuse_scheme="harness.checkpoint:vllm_refusal")
BUILTIN = {"hf": "harness.backends:HF", "vllm": "harness.backends:VLLM"}  # as pyproject.toml registers them


class Registry(MutableMapping):
    """name -> BackendSpec, read from the entry points on first use. An entry point that does not load, or does not
    name a BackendSpec of its own name, is kept aside with the reason (``broken``) for the errors to say."""

    def __init__(self):
        self._specs: dict[str, BackendSpec] | None = None
        self.broken: dict[str, str] = {}

    def _load(self) -> dict[str, BackendSpec]:
        if self._specs is None:
            # read on first use (docstring above): importlib.metadata stays out of start-up
            from importlib.metadata import entry_points

            targets = dict(BUILTIN)  # an installed package's entry points win; a bare checkout has the built-ins
            targets.update({ep.name: ep.value for ep in entry_points(group=GROUP)})
            specs, broken = {}, {}
            for name, target in sorted(targets.items()):
                try:
                    spec = load_class(target)
                except Exception as e:  # noqa: BLE001 - an outside package's fault, said when it is asked for
                    broken[name] = f"entry point {name} = {target} does not load: {type(e).__name__}: {e}"
                    continue
                if not isinstance(spec, BackendSpec) or spec.name != name:
                    broken[name] = f"entry point {name} = {target} is not a BackendSpec named {name!r}"
                    continue
                specs[name] = spec
            self._specs, self.broken = specs, broken
        return self._specs

    def reload(self) -> None:
        """Read the entry points again (after a package was installed in this process)."""
        self._specs = None

    def __getitem__(self, name):
        return self._load()[name]

    def __setitem__(self, name, spec):
        self._load()[name] = spec

    def __delitem__(self, name):
        del self._load()[name]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())

    def describe(self) -> str:
        """Which backends this environment can run, which it cannot (and how to install them), which failed."""
        lacking = {n: b.missing() for n, b in self.items()}
        can = [n for n, miss in lacking.items() if not miss]
        cannot = [f"{n} ({self[n].install_hint()})" for n, miss in lacking.items() if miss]
        parts = [f"installed here: {', '.join(can) or '(none)'}"]
        if cannot:
            parts.append(f"not installed: {'; '.join(cannot)}")
        parts += list(self.broken.values())
        return "; ".join(parts)


BACKENDS = Registry()


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        if name in BACKENDS.broken:
            raise ConfigError(f"backend {name!r} is registered but unusable: {BACKENDS.broken[name]}")
        e = unknown_name("backend", name, BACKENDS)
        raise ConfigError(f"{e} ({BACKENDS.describe()}; a package adds one through the entry-point group {GROUP})")
    return BACKENDS[name]


# optional libraries that no backend imports, and this package's extra that brings each (pyproject.toml's
# [project.optional-dependencies]); a backend's own libraries and install hint are its BackendSpec's
NON_BACKEND_EXTRAS = {"llmcompressor": "quant", "gguf": "real"}


def missing_extra(e: ModuleNotFoundError) -> HarnessError | None:
    """A clear error for an optional library this environment lacks (None for any other missing module)."""
    top = (e.name or "").split(".")[0]
    hint = next((f"the {b.name} backend needs it: {b.install_hint()}" for b in BACKENDS.values() if top in b.modules),
                None)
    if hint is None and top in NON_BACKEND_EXTRAS:
        extra = NON_BACKEND_EXTRAS[top]
        hint = f"it comes with the '{extra}' extra: pip install 'nvfp4-gate[{extra}]'"
    if hint is None:
        return None
    return HarnessError(f"{top} is not installed in this environment ({sys.executable}); {hint}. The tiny default "
                        "on CPU needs [hf,quant] (from a checkout: pip install -e '.[dev]'); a vLLM gate needs [vllm] "
                        "here and [quant] in the quantization interpreter.")


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
            # the package's __init__ imports only what the registry needs
            from harness.backends.gpu_memory import visible_gpus

            devices = dp.plan_devices(size, per_engine, visible_gpus())
            return dp.DataParallelBackend(spec, b.cls, size, devices)
    return backend_class(name)(spec)


__all__ = ["Backend", "BackendSpec", "DocResult", "EngineSpec", "BACKENDS", "GROUP", "backend_class", "backend_spec",
           "check_results", "load_class", "make_backend", "missing_extra"]
