"""The core stays light: importing it (and the CLI and the pytest plugin) pulls in no torch, transformers, vLLM,
llm-compressor, matplotlib, datasets or numpy; those load only where a step needs them. The independent NVFP4
reference is numpy by design and is left out of that list."""
from __future__ import annotations

import subprocess
import sys

import import_graph  # tests/import_graph.py

CORE = ["config.schema", "data.rules", "data.files", "stages.prepare", "stages.provide", "session.engines",
        "stages.judge", "metrics", "baselines", "report.build", "session.gate", "recipes.catalog", "config.bundled",
        "atomic", "models.identity", "pytest_plugin", "cli.main", "backends", "cli.options", "fidelity",
        "stages.preflight", "models.pypi", "config.locate", "stages.run", "cli.parser", "session.baselines",
        "session.judging", "report.markdown", "report.chart", "recipes.records", "recipes.compare", "config.messages",
        "config.overrides", "stages.results", "stages.score", "stages.render", "config.sections", "config.load"]
HEAVY = ["torch", "transformers", "vllm", "llmcompressor", "compressed_tensors", "matplotlib", "datasets", "numpy"]


def test_the_core_imports_without_heavy_libraries(root):
    code = ("import sys\n" + "".join(f"import harness.{m}\n" for m in CORE)
            + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at import time: {r.stdout.strip()}"


def test_the_cli_imports_without_pytest(root):
    """The options the CLI shares with the plugin live in harness.cli.options: the CLI does not load pytest."""
    code = "import sys\nimport harness.cli.main\nprint('pytest' in sys.modules, '_pytest' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False False", r.stdout


def test_no_import_cycle_among_harness_modules(root):
    """Not even through an import inside a function: each module's dependencies form a tree of layers."""
    graph = import_graph.graph(root)
    # the run reads the stages' results; the judge never reaches back into the session
    assert "harness.stages.results" in graph["harness.stages.run"]
    assert "harness.session.gate" not in graph["harness.stages.judge"]
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            assert state.get(d) != "open", "import cycle: " + " -> ".join(path[path.index(d):] + [d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
