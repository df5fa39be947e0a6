"""`--set KEY=VALUE` overrides of a config (CLI and pytest): parsed as YAML values, applied by dotted key."""
from __future__ import annotations

import yaml

from harness.errors import ConfigError


def set_dotted(data: dict, key: str, value) -> None:
    """``model.engine.nvfp4.vllm.linear_backend`` -> data["model"]["engine"]["nvfp4"]["vllm"]["linear_backend"]."""
    *parents, leaf = key.split(".")
    cur = data
    for i, part in enumerate(parents):
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents[: i + 1])} is a {type(nxt).__name__}, not a mapping")
        cur = nxt
    cur[leaf] = value


def parse_set(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` pairs (VALUE read as YAML: 0.9, true, [a, b], null) as load_config overrides."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.engine.nvfp4.vllm.linear_backend=emulation")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return out
