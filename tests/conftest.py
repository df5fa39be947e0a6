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


QUICK_TEXTS = 40  # per dataset: 40 UltraChat rows and the first 40 WikiText rows (about 10k scored tokens)


@pytest.fixture(scope="session")
def quick_project(tmp_path_factory):
    """A project like the repo's, whose tiny config scores the first 40 texts of each dataset, with BF16 baselines
    made here (same model, recipes and checkpoint cache). For tests of the gate's mechanics (plugin flow, per-token
    files, benchmarks); the full default's numbers are tested on the full default."""
    import yaml

    from harness.config import load_config
    from harness.gate import GateSession

    root = tmp_path_factory.mktemp("quick")
    for d in ("configs", "recipes"):
        shutil.copytree(ROOT / d, root / d)
    (root / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    for d in cfg["datasets"].values():
        d["n_texts"] = QUICK_TEXTS
    (root / "configs/tiny.yaml").write_text(yaml.safe_dump(cfg))
    s = GateSession(load_config(root / "configs/tiny.yaml"), quiet=True, update_baselines=True)
    try:
        s.update_baselines()
    finally:
        s.close()
    return root
