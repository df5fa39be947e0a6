"""Checks that need no GPU and no model, run before any quantization or engine start (GateSession.preflight): each
fault found here costs seconds, not an hour of quantization. The baselines' own checks (present, same data, same
model, side files intact) live with the baselines; this module holds the rest: where the report goes, which
libraries the chosen backend needs. No torch import."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness.backends import BACKENDS, backend_spec, load_class
from harness.config.locate import ModelSource
from harness.errors import ConfigError, HarnessError
from harness.recipes.catalog import load_recipe, recipe_names

MIN_FREE_BYTES = 64 << 20  # a report with per-token files and charts stays far below this


def check_writable_dir(path: Path, what: str, hint: str) -> Path:
    """``path`` can become a folder that takes files and has room; else one clear error. Nothing is created: the
    nearest existing folder on the way is probed with a temporary file, removed at once."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "that path is" if existing == path else f"{existing} on that path is"
        raise HarnessError(f"{what} {path}: {where} a file, not a folder; {hint}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(existing).free
    except PermissionError as e:
        raise HarnessError(f"{what} {path}: not writable ({e.strerror}); {hint}") from None
    except OSError as e:
        raise HarnessError(f"{what} {path}: cannot write there ({e.strerror or e}); {hint}") from None
    if free < MIN_FREE_BYTES:
        raise HarnessError(f"{what} {path}: only {free / 2**20:.1f} MiB free on that disk; free some space or {hint}")
    return path


def check_backend_installed(backend: str) -> None:
    """The libraries the scoring backend imports are installed here; else the extra that brings them."""
    b = backend_spec(backend)
    for mod in b.missing():
        needs = f"the '{b.extra}' extra: {b.install_hint()}" if b.extra else b.install_hint()
        raise HarnessError(f"{mod} is not installed in this environment ({sys.executable}); the {b.name} backend "
                           f"needs {needs}. The tiny default on CPU needs [hf,quant] (from a checkout: pip install -e "
                           "'.[dev]'); a vLLM gate needs [vllm] here and [quant] in the quantization interpreter.")


def model_source(cfg):
    """The config's model located once (harness.config.locate.ModelSource), after the checks a missing local path
    gets now, not as a loader traceback later: an unset environment variable in it, a folder that does not exist
    (and likewise for model.checkpoint)."""
    for key in ("path", "checkpoint", "tokenizer"):
        raw = getattr(cfg.model, key)
        if raw and "$" in os.path.expandvars(raw):
            raise ConfigError(f"model.{key} {raw!r}: an environment variable in it is not set; set it (e.g. "
                              "export HARNESS_SYNTH_DIR=/dev/shm/synth) or write the path out")
    m = cfg.model
    found = {key: cfg.locate(getattr(m, key)) for key in ("path", "checkpoint") if getattr(m, key)}
    for key, loc in found.items():
        if loc.is_local and not Path(loc.path).exists():
            raise ConfigError(f"model.{key} {getattr(m, key)!r} does not exist ({loc.path}); give a local checkpoint "
                              "dir or a hub id such as Qwen/Qwen2.5-7B-Instruct")
    return ModelSource(m.path, found["path"], cfg.resolve(m.tokenizer), found.get("checkpoint"))


def scheme_refusal(cfg, backend: str, recipe_name: str, scheme: str, why: str) -> str:
    """The recipe's scheme has no kernel in this backend: the backends installed here that run it, and the
    recipes (of the project's and the shipped ones) this backend runs; both read off the registries."""
    def runs(spec, scheme) -> bool:
        return not (spec.refuse_scheme and load_class(spec.refuse_scheme)(scheme))

    mine, rdir = BACKENDS[backend], cfg.path_of("recipes_dir")
    others = [n for n, b in BACKENDS.items() if n != backend and not b.missing() and runs(b, scheme)]
    ok = []
    for name in recipe_names(rdir):
        try:
            ok += [name] if runs(mine, load_recipe(rdir, name).scheme) else []
        except HarnessError:  # a recipe that does not load is not a suggestion
            pass
    ways = [f"gate it with --backend {' or --backend '.join(others)}"] if others else []
    ways += [f"pick a recipe the {backend} backend runs ({', '.join(ok)})"] if ok else []
    said = ", or ".join(ways)
    return f"recipe {recipe_name}: scheme {scheme}: {why}; nothing was quantized" + (
        f". {said[0].upper()}{said[1:]}" if said else "")
