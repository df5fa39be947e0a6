"""The core stays light: importing it (and the CLI and the pytest plugin) pulls in no torch, transformers, vLLM,
llm-compressor, matplotlib, datasets or numpy; those load only where a step needs them."""
from __future__ import annotations

import subprocess
import sys

CORE = ["config", "data", "prepare", "provide", "engines", "judge", "metrics", "baselines", "report", "gate",
        "recipes", "bundled", "atomic", "identity", "plugin", "cli", "backends"]
HEAVY = ["torch", "transformers", "vllm", "llmcompressor", "compressed_tensors", "matplotlib", "datasets", "numpy"]


def test_the_core_imports_without_heavy_libraries(root):
    code = ("import sys\n" + "".join(f"import harness.{m}\n" for m in CORE)
            + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at import time: {r.stdout.strip()}"
