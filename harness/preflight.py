"""Checks that need no GPU and no model, run before any quantization or engine start (GateSession.preflight): each
fault found here costs seconds, not an hour of quantization. The baselines' own checks (present, same data, same
model, side files intact) live with the baselines; this module holds the rest: where the report goes, which
libraries the chosen backend needs. No torch import."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from harness.errors import HarnessError

MIN_FREE_BYTES = 64 << 20  # a report with per-token files and charts stays far below this
BACKEND_MODULES = {"hf": ("torch", "transformers"), "vllm": ("vllm",)}


def check_writable_dir(path: Path, what: str, hint: str) -> Path:
    """``path`` exists (made now if missing), is a folder, can take a file and has room; else one clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".harness-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(path).free
    except FileExistsError:
        raise HarnessError(f"{what} {path}: a file is in the way of that folder; {hint}") from None
    except NotADirectoryError:
        raise HarnessError(f"{what} {path}: part of that path is a file, not a folder; {hint}") from None
    except PermissionError as e:
        raise HarnessError(f"{what} {path}: not writable ({e.strerror}); {hint}") from None
    except OSError as e:
        raise HarnessError(f"{what} {path}: cannot write there ({e.strerror or e}); {hint}") from None
    if free < MIN_FREE_BYTES:
        raise HarnessError(f"{what} {path}: only {free / 2**20:.1f} MiB free on that disk; free some space or {hint}")
    return path


def check_backend_installed(backend: str) -> None:
    """The libraries the scoring backend imports are installed here; else the extra that brings them."""
    for mod in BACKEND_MODULES.get(backend, ()):
        if importlib.util.find_spec(mod) is None:
            from harness.errors import missing_extra

            raise missing_extra(ModuleNotFoundError(f"No module named {mod!r}", name=mod))
