"""Test-suite setup: a per-run checkpoint cache (unless HARNESS_CACHE is set) and shared helpers."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if not os.environ.get("HARNESS_CACHE"):
    os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-test-cache-")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def project(tmp_path) -> Path:
    """A throwaway copy of the project's data (configs, recipes, baselines) so tests may change it."""
    for d in ("configs", "recipes", "baselines"):
        shutil.copytree(ROOT / d, tmp_path / d)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    return tmp_path


class FakeTokenizer:
    """Whitespace tokenizer: one id per word (+ a fake vocabulary JSON for the fingerprint)."""

    def __init__(self, salt: str = ""):
        self.salt = salt

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[(hash(w) % 1000) + 1 for w in t.split()] for t in texts]}

    def get_vocab(self):
        return {"salt" + self.salt: 0}


@pytest.fixture
def fake_tokenizer():
    return FakeTokenizer()
