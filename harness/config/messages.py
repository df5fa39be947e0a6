"""A pydantic ValidationError of a config or recipe file as lines a user can act on: the key's dotted path, and for
an unknown key the keys allowed at that place (found by walking the model's annotations, dicts included)."""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def format_validation_error(e: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            lines.append(f"  {loc}: unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else ""))
        elif err["type"] == "missing":
            lines.append(f"  {loc}: required key missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            inp = err.get("input")
            got = "" if isinstance(inp, (dict, list)) else f" (got {inp!r})"
            lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc) -> list[str]:
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(cur, _DictOf):  # keyed into a dict: the next level is its value model
            cur = cur.value_model
        elif isinstance(cur, type) and issubclass(cur, BaseModel) and part in cur.model_fields:
            cur = _inner_model(cur.model_fields[part].annotation)
        else:
            return []
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return [k for k in cur.model_fields if k not in ("source_path", "fallback_baselines_dir")]
    return []


def _inner_model(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return _DictOf(_inner_model(args[1]))
    for a in args:
        m = _inner_model(a)
        if m is not None:
            return m
    return None


class _DictOf:
    def __init__(self, value_model):
        self.value_model = value_model
