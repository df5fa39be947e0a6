"""The embedded tiny default: a self-built 2-layer Qwen2 model (shipped in ``model/``) and a seeded corpus.

``builtin:tiny`` -> the model dir; ``builtin:corpus/<file>`` -> a file of the synthetic corpus, generated on first
use into the cache (``$HARNESS_CACHE`` or ``~/.cache/harness``); generation is deterministic and takes < 1 s;
``builtin:texts/<path>`` -> real text shipped in ``harness/texts`` (WikiText-2's test split, with its licence).
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.atomic import atomic_dir
from harness.errors import ConfigError
from harness.tiny.corpus import CORPUS_VERSION, write_corpus

MODEL_DIR = Path(__file__).resolve().parent / "model"
TEXTS_DIR = Path(__file__).resolve().parent.parent / "texts"


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")


def corpus_dir() -> Path:
    final = cache_root() / f"tiny-corpus-v{CORPUS_VERSION}"
    if (final / "VERSION").exists():
        return final

    with atomic_dir(final, prefix=".corpus-") as tmp:  # another process winning the race wrote the same copy
        write_corpus(tmp)
    return final


def builtin_path(name: str) -> Path:
    if name == "tiny":
        if not (MODEL_DIR / "config.json").exists():
            raise ConfigError(f"the embedded tiny model is missing at {MODEL_DIR}; rebuild it with "
                              "`python -m harness.tiny.build`")
        return MODEL_DIR
    if name.startswith("corpus/"):
        return corpus_dir() / name[len("corpus/"):]
    if name.startswith("texts/"):  # real text shipped with its licence (harness/texts/README.md)
        p = TEXTS_DIR / name[len("texts/"):]
        if not p.exists():
            raise ConfigError(f"builtin:{name}: no such shipped text; known: "
                              + ", ".join(f"builtin:texts/{d.name}" for d in sorted(TEXTS_DIR.iterdir()) if d.is_dir()))
        return p
    raise ConfigError(f"unknown builtin path 'builtin:{name}'; known: builtin:tiny, builtin:corpus/<file>, "
                      "builtin:texts/<dataset>")
