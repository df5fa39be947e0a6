"""One exception type for every user-facing error: the message says what went wrong and what to do next."""
from __future__ import annotations

import sys


class HarnessError(Exception):
    """A problem the user can fix (bad config, missing baseline, failed quantization, ...)."""


class ConfigError(HarnessError):
    """The config file (or a command-line value) is invalid."""


class BaselineError(HarnessError):
    """A baseline is missing, unreadable, or does not match the prepared data."""


class DataError(HarnessError):
    """Data that cannot be read as the task or dataset expects: the message names the file (and line) and the fix."""


class BackendError(HarnessError):
    """A scoring backend failed or returned unusable numbers."""


def unknown_name(kind: str, name: str, known) -> HarnessError:
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(known) if known else '(none)'}")


# optional libraries and the package extra that brings each (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"torch": "hf", "transformers": "hf", "compressed_tensors": "hf", "llmcompressor": "quant", "vllm": "vllm"}


def missing_extra(e: ModuleNotFoundError) -> HarnessError | None:
    """A clear error for an optional library this environment lacks (None for any other missing module)."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return HarnessError(f"{top} is not installed in this environment ({sys.executable}); it comes with the "
                        f"'{EXTRAS[top]}' extra: pip install 'nvfp4-gate[{EXTRAS[top]}]'. The tiny default on CPU "
                        "needs [hf,quant] (from a checkout: pip install -e '.[dev]'); a vLLM gate needs [vllm] here "
                        "and [quant] in the quantization interpreter.")
