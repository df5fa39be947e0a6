"""The options the CLI and the pytest plugin share, defined once (as pytest-benchmark shares its option adders between
its plugin and its CLI): flags, type, default, help. A value is checked by its type function at the command line, so
a bad one fails there. No pytest import: the CLI loads this, not the plugin.

    add_options(argparse_parser, ["backend", "batch_size"], "cli")      # --backend, --batch-size
    add_options(pytest_group, ["backend", "batch_size"], "pytest")      # the same, as pytest options
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from harness.backends import BACKENDS


def min_score(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--min-score takes a number such as 99.0, got {v!r}") from None
    if not 0 < f <= 200:
        raise argparse.ArgumentTypeError(f"--min-score must be in (0, 200], got {f}")
    return f


def positive_int(v: str) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {i}")
    return i


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]                      # the CLI's
    kwargs: dict
    pytest_flags: tuple[str, ...] | None = None  # where the plugin spells it otherwise (pytest owns --force, ...)
    pytest_dest: str | None = None
    help_pytest: str | None = None
    extra: dict = field(default_factory=dict)


OPTIONS: dict[str, Option] = {
    "recipe": Option(("--recipe",), dict(default=None, metavar="NAME",
                                         help="recipe in recipes/ (default: the config's)"),
                     help_pytest="run only this recipe (default: every default recipe in recipes/ that applies to "
                                 "the model)"),
    "backend": Option(("--backend",), dict(choices=BACKENDS, default=None,  # read when first asked
                                           help="scoring backend (default: the config's)")),
    "batch_size": Option(("--batch-size",), dict(type=positive_int, default=None, metavar="N",
                                                 help="requests per scoring batch; 1 = the reference's one-at-a-time "
                                                      "evaluation")),
    "quant_python": Option(("--quant-python",), dict(default=None, metavar="PYTHON",
                                                     help="interpreter with llmcompressor (default: "
                                                          "$HARNESS_QUANT_PYTHON or this one)")),
    "quant_pythonpath": Option(("--quant-pythonpath",), dict(default=None, metavar="PATHS",
                                                             help="extra PYTHONPATH for that interpreter (default: "
                                                                  "$HARNESS_QUANT_PYTHONPATH)")),
    "min_score": Option(("--min-score",), dict(type=min_score, default=None, metavar="SCORE",
                                               help="override every relative-score threshold (overall and per "
                                                    "dataset; not the distribution limits kld_mean_max / top1_min)")),
    "update_baselines": Option(("--update-baselines",), dict(action="store_true", default=False,
                                                             help="score BF16 and rewrite the baselines (atomically) "
                                                                  "first")),
    "force": Option(("--force",), dict(action="store_true", default=False,
                                       help="with --update-baselines: accept a changed data fingerprint"),
                    pytest_flags=("--force", "--harness-force"), pytest_dest="harness_force"),
    "report_dir": Option(("--report-dir",), dict(default=None, metavar="DIR",
                                                 help="where reports go (default: the config's reports_dir)"),
                         pytest_flags=("--harness-report-dir",), pytest_dest="harness_report_dir"),
    "record_recipe": Option(("--record-recipe",), dict(action="store_true", default=False,
                                                       help="store this run's per-document result of the recipe "
                                                            "(<baselines_dir>/<model>/recipes/<recipe>.json, "
                                                            "atomically): what recipe_regression compares with")),
    "token_detail": Option(("--token-detail",), dict(action="store_true", default=False,
                                                     help="save per-token logprobs (compressed numpy) and report the "
                                                          "tokens/documents that lost most")),
}


def add_options(parser, names: list[str], target: str) -> None:
    """Add the named options to an argparse parser (``target="cli"``) or a pytest option group (``"pytest"``)."""
    for name in names:
        o = OPTIONS[name]
        kwargs = dict(o.kwargs)
        if target == "pytest":
            flags = o.pytest_flags or o.flags
            kwargs["dest"] = o.pytest_dest or name
            if o.help_pytest:
                kwargs["help"] = o.help_pytest
            parser.addoption(*flags, **kwargs)
        else:
            parser.add_argument(*o.flags, dest=name, **kwargs)
