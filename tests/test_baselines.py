from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from harness.baselines import Baseline, BaselineStore, check_data_matches
from harness.errors import BaselineError


def _b(**kw) -> Baseline:
    d = dict(model="m", dataset="d", ppl=2.0, nll=0.693147, tokens=10, kept_texts=2, fingerprint="abc",
             doc_nll_sums=[3.0, 3.93147], doc_tokens=[4, 6])  # numbers that add up: 6.93147 / 10 = ln 2
    d.update(kw)
    return Baseline(**d)


def test_roundtrip_and_location(tmp_path):
    store = BaselineStore(tmp_path)
    p = store.write(_b())
    assert p == tmp_path / "m" / "d.json"
    assert store.load("m", "d") == _b()
    assert not list(p.parent.glob(".*tmp"))  # no temp file left behind


def test_missing_baseline_names_the_command(tmp_path):
    store = BaselineStore(tmp_path, update_hint="pytest --update-baselines")
    with pytest.raises(BaselineError, match=r"baseline not found: .*d\.json\n  create it with: pytest --update-baselines"):
        store.load("m", "d")


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable JSON"),
    (json.dumps({"schema_version": 99}), "schema_version 99"),
    (json.dumps({**json.loads(_b().to_json()), "ppl": "NaN"}), "not a finite number"),
    (json.dumps({**json.loads(_b().to_json()), "extra": 1}), "unknown baseline field"),
    (json.dumps({**json.loads(_b().to_json()), "kind": "reference-result"}), "not a baseline"),
])
def test_bad_baseline_files_are_refused(tmp_path, content, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "d.json").write_text(content)
    with pytest.raises(BaselineError, match=message):
        BaselineStore(tmp_path).load("m", "d")


def test_fingerprint_mismatch_shows_both_sides():
    class Prep:
        class stats:
            kept_texts = 2
            tokens = 11
        fingerprint = "zzz"
        tokenizer_id = "tok2"

    with pytest.raises(BaselineError) as e:
        check_data_matches(_b(data={"tokenizer": "tok1"}), Prep())
    msg = str(e.value)
    assert "different tokenizer" in msg
    assert "baseline=abc" in msg and "prepared=zzz" in msg and "baseline=10" in msg and "prepared=11" in msg


def test_update_killed_mid_write_leaves_previous_file(tmp_path):
    """SIGKILL while the new baseline is being written: the old file is intact and loads."""
    store = BaselineStore(tmp_path)
    store.write(_b(ppl=2.0))
    code = (
        "import os, sys, harness.baselines as hb\n"
        "real = os.fsync\n"
        "def stall(fd):\n"
        "    sys.stdout.write('writing\\n'); sys.stdout.flush(); import time; time.sleep(60)\n"
        "os.fsync = stall\n"
        f"hb.BaselineStore({str(tmp_path)!r}).write(hb.Baseline(model='m', dataset='d', ppl=9.0, nll=2.197, tokens=10,"
        " kept_texts=2, fingerprint='abc', doc_nll_sums=[1.0]*50000, doc_tokens=[1]*50000))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path.parent) + os.pathsep + os.getcwd()})
    assert proc.stdout.readline().strip() == "writing"  # the new content is in a temp file, not yet renamed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.load("m", "d").ppl == 2.0
