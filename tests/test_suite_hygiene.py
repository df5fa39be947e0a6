"""The test run cleans up after itself (conftest.py): the checkpoint cache and quantization ledger it made for the run
(~400 MB in /tmp per run) go when it ends; one set from outside (.ci/run's ledger, a user's HARNESS_CACHE) stays."""
from __future__ import annotations

import os
import subprocess
import sys


def test_a_run_removes_the_cache_it_made_and_keeps_a_ledger_given(root, tmp_path):
    made, given = tmp_path / "tmp", tmp_path / "given"
    made.mkdir()
    given.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_CACHE", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env.update(TMPDIR=str(made), HARNESS_QUANT_LEDGER=str(given / "quant.jsonl"), HARNESS_QUANT_ZYGOTE="0")
    (given / "quant.jsonl").write_text("")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:harness.pytest_plugin",
                        "tests/test_timings.py"], cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [p.name for p in made.iterdir() if p.name.startswith("harness-test-")] == []  # made as it began: gone
    assert (given / "quant.jsonl").exists()
