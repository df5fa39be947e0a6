"""Shared test helpers (the per-run checkpoint cache and quantization ledger are set in the root conftest.py)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def copy_project(src: Path, dst: Path) -> Path:
    """``dst`` made a project like ``src``: its configs, recipes and baselines, and a pyproject.toml of its own."""
    for d in ("configs", "recipes", "baselines"):
        shutil.copytree(src / d, dst / d)
    (dst / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    return dst


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

    from harness.config.load import load_config
    from harness.session.gate import GateSession

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


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """The tiny default's NVFP4 checkpoint, from the run's cache (built once per run, by whichever test asks first)."""
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    s = GateSession(load_config(), quiet=True)
    try:
        return s.checkpoint().path
    finally:
        s.close()


@pytest.fixture
def copy_quantizer(tmp_path, monkeypatch):
    """``copy_quantizer(source, sleep_s=0)``: a quantization interpreter (for --quant-python / HARNESS_QUANT_PYTHON)
    that, instead of running llm-compressor, waits ``sleep_s`` and copies the checkpoint ``source`` into the spec's
    output folder with its marker. It answers the versions probe as this Python. For tests of what the harness does
    around a build (locking, scheme checks), which need a checkpoint but not another llm-compressor run. Its builds
    are plain children (HARNESS_QUANT_ZYGOTE=0): it cannot serve as a warm interpreter, and asking it would close
    the run's warm one to make room (harness/quant/zygote_client.py keeps two)."""
    monkeypatch.setenv("HARNESS_QUANT_ZYGOTE", "0")

    def make(source, sleep_s: float = 0.0):
        path = tmp_path / f"copy-quantizer-{len(list(tmp_path.glob('copy-quantizer-*')))}"
        path.write_text(f"""#!/bin/sh
if [ "$1" = "-c" ]; then exec "{sys.executable}" "$@"; fi
exec "{sys.executable}" - "$@" <<'PYEOF'
import json, os, shutil, sys, time
spec = json.load(open(sys.argv[sys.argv.index("--spec") + 1]))
print("copy quantizer: {source}", flush=True)
time.sleep({float(sleep_s)})
os.makedirs(spec["output_dir"], exist_ok=True)
for f in os.listdir("{source}"):
    if not f.startswith("harness_"):
        shutil.copy2(os.path.join("{source}", f), spec["output_dir"])
open(os.path.join(spec["output_dir"], "harness_quantization.json"), "w").write(json.dumps(
    {{"spec": spec, "quantize_s": {float(sleep_s)}, "calibration_samples": 0, "versions": {{}},
     "test_double": "copy of {source}"}}))
PYEOF
""")
        path.chmod(0o755)
        return str(path)

    return make
