"""``harness``: quantize, score, gate, baseline update, report, cache. Thin layer over harness.session.gate.

Exit codes: 0 gate passed / command succeeded, 1 gate failed, 2 bad input or environment (the message says what to
do), 3 internal error (traceback in a file, one line on the terminal), 130 Ctrl-C, 143 SIGTERM.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.cli.gate_commands import cmd_baseline, cmd_gate, cmd_quantize, cmd_report, cmd_score
from harness.cli.parser import build_parser
from harness.cli.tool_commands import (cmd_cache, cmd_compare, cmd_data, cmd_fetch_model, cmd_init, cmd_sensitivity,
                                        cmd_synth)
from harness.errors import HarnessError


EXIT_CODES = {0: "gate passed / command succeeded", 1: "gate failed", 2: "bad input or environment (the message says "
              "what to do)", 3: "internal error (a bug: the traceback is in the file named)", 130: "interrupted (Ctrl-C)",
              143: "terminated (SIGTERM, e.g. a CI cancel)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled): unwinds like Ctrl-C, so engines, children and temp folders are cleaned up alike."""


def _on_sigterm(signum, frame):
    raise Terminated()


def internal_error_report(e: BaseException) -> str:
    """Not a HarnessError: a bug. Its traceback goes to a file; the one line returned points at it."""
    import tempfile
    import time
    import traceback

    from harness.tiny import cache_root

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    path = None
    for folder in (cache_root() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(e):x}.log"
            path.write_text(f"{' '.join(sys.argv)}\n{text}")
            break
        except OSError:
            path = None
    where = f"traceback in {path}" if path else f"traceback:\n{text}"
    return f"internal error: {type(e).__name__}: {str(e)[:300]} ({where}; please report it)"


def internal_error(e: BaseException) -> int:
    print(internal_error_report(e), file=sys.stderr)
    return 3


def main(argv=None) -> int:
    import signal

    a = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading_main() else None
    handlers = {"gate": cmd_gate, "quantize": cmd_quantize, "score": cmd_score, "baseline": cmd_baseline,
                "report": cmd_report, "cache": cmd_cache, "data": cmd_data, "synth-checkpoint": cmd_synth,
                "fetch-model": cmd_fetch_model, "init": cmd_init, "sensitivity": cmd_sensitivity, "compare": cmd_compare}
    try:
        return handlers[a.cmd](a)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional library missing (a plain `pip install .`): say which extra
        from harness.backends import missing_extra

        err = missing_extra(e)
        if err is None:
            return internal_error(e)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM): no report written; engines closed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted: no report written; engines closed", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the boundary: whatever else happened is a bug, said in one line
        return internal_error(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_main() -> bool:
    """Signal handlers can only be installed from the main thread (a test may call main() from another)."""
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    raise SystemExit(main())
