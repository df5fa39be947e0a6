"""The core stays light: importing it (and the CLI and the pytest plugin) pulls in no torch, transformers, vLLM,
llm-compressor, matplotlib, datasets or numpy; those load only where a step needs them. The independent NVFP4
reference is numpy by design and is left out of that list."""
from __future__ import annotations

import subprocess
import sys

CORE = ["config", "data", "prepare", "provide", "engines", "judge", "metrics", "baselines", "report", "gate",
        "recipes", "bundled", "atomic", "identity", "plugin", "cli", "backends", "options", "fidelity", "preflight",
        "pypi_models", "locate", "run", "cli_parser", "session_baselines", "session_judging", "report_markdown",
        "report_chart", "recipe_records", "compare", "validation_messages", "overrides"]
HEAVY = ["torch", "transformers", "vllm", "llmcompressor", "compressed_tensors", "matplotlib", "datasets", "numpy"]


def test_the_core_imports_without_heavy_libraries(root):
    code = ("import sys\n" + "".join(f"import harness.{m}\n" for m in CORE)
            + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at import time: {r.stdout.strip()}"


def test_the_cli_imports_without_pytest(root):
    """The options the CLI shares with the plugin live in harness.options: the CLI does not load pytest."""
    code = "import sys\nimport harness.cli\nprint('pytest' in sys.modules, '_pytest' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False False", r.stdout
