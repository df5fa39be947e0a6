"""One exception type for every user-facing error: the message says what went wrong and what to do next."""
from __future__ import annotations

import difflib


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
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(known) if known else '(none)'}")
