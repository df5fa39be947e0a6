"""The warm quantization interpreter (harness/quant/zygote.py, harness/quant/zygote_client.py): builds forked from one
import, as plain children would run them. The interpreters here are stand-ins whose "oneshot" writes a marker (or
fails, or is killed), so the protocol is tested in a second; that a forked llm-compressor build is bit for bit a plain child's is asserted where
the suite builds for real (tests/test_faults.py's rebuild, tests/test_nvfp4_ref.py's oracle)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness.quant import zygote_client as qz
from harness.errors import HarnessError
from harness.quant.quantize import CalibrationSpec, QuantInterpreter, QuantSpec, run_quantization

# a quantization interpreter: `-m harness.quant.quantize` and `-m harness.quant.zygote` as the real ones, but the zygote
# preloads nothing and oneshot is a stand-in that says who it is, or fails, or is killed, as the spec's model says
STAND_IN = """#!/bin/sh
echo "$@" >> "{calls}"
exec "{python}" -c '
import json, os, signal, sys
import harness.quant.zygote as z, harness.quant.quantize as q

def oneshot(spec, log=print):
    print("parent", os.getppid(), "cache", os.environ.get("HARNESS_CACHE"), "pgid", os.getpgid(0) == os.getpid(),
          flush=True)
    if spec.model == "fail":
        raise RuntimeError("boom")
    if spec.model == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    os.makedirs(spec.output_dir, exist_ok=True)
    open(os.path.join(spec.output_dir, q.MARKER), "w").write(json.dumps({{"spec": spec.to_dict(), "quantize_s": 0}}))
    return {{}}

q.run_oneshot = oneshot
z.PRELOAD = ()
z.gpu_visible = lambda: False  # the protocol is tested on GPU machines too
if sys.argv[1:3] == ["-m", "harness.quant.zygote"]:
    sys.exit(5 if {refuse} else z.main(sys.argv[3:]))
sys.exit(q.main(sys.argv[3:]))
' "$@"
"""


def _interp(tmp_path, refuse=False) -> tuple[QuantInterpreter, Path]:
    calls = tmp_path / "calls.txt"
    py = tmp_path / ("refusing-python" if refuse else "python")
    py.write_text(STAND_IN.format(calls=calls, python=sys.executable, refuse=refuse))
    py.chmod(0o755)
    return QuantInterpreter(python=str(py)), calls


def _spec(out, model="ok") -> QuantSpec:
    return QuantSpec(model=model, recipe="x: 1", output_dir=str(out),
                     calibration=CalibrationSpec(path="parquet", split="train", samples=1, max_seq_len=8, seed=0))


@pytest.fixture
def own_zygotes(monkeypatch):
    """Zygotes started by the test are closed after it, and the suite's warm one, if any, is left alone: not closed
    to make room for the test's (harness/quant/zygote_client.py keeps KEEP at most), which would cost a later build of the
    run another llm-compressor import."""
    monkeypatch.delenv(qz.ENV_SWITCH, raising=False)
    monkeypatch.setattr(qz, "gpu_visible", lambda: False)
    monkeypatch.setattr(qz, "KEEP", qz.KEEP + len(qz._zygotes) + 4)
    before = set(qz._zygotes)
    yield
    for k in set(qz._zygotes) - before:
        qz._zygotes.pop(k).close()
    qz._refused.clear()


def test_builds_are_forked_by_one_zygote_with_the_callers_environment_and_fail_as_plain_children_do(
        tmp_path, monkeypatch, own_zygotes):
    interp, calls = _interp(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "first"))
    run_quantization(_spec(tmp_path / "a"), interp, logs / "a.log", log=lambda m: None)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "second"))  # a per-build variable: the same zygote serves
    # and what importing scikit-learn in the harness sets (lm-eval's metrics import it), and what the vLLM backend
    # sets for an engine of several GPUs: not a second import
    monkeypatch.setenv("KMP_INIT_AT_FORK", "FALSE")
    monkeypatch.setenv("KMP_DUPLICATE_LIB_OK", "True")
    from harness.backends.vllm import MULTICAST_OFF

    for k, v in MULTICAST_OFF.items():
        monkeypatch.setenv(k, v)
    run_quantization(_spec(tmp_path / "b"), interp, logs / "b.log", log=lambda m: None)
    (zygote,) = [z for k, z in qz._zygotes.items() if k[0] == interp.python]
    assert all((tmp_path / d / "harness_quantization.json").exists() for d in ("a", "b"))
    # each build a child of the zygote, leading a process group of its own, seeing the caller's environment now
    assert (logs / "a.log").read_text().split()[:6] == ["parent", str(zygote.proc.pid), "cache",
                                                        str(tmp_path / "first"), "pgid", "True"]
    assert (logs / "b.log").read_text().split()[:4] == ["parent", str(zygote.proc.pid), "cache",
                                                        str(tmp_path / "second")]
    assert [ln.split()[:2] for ln in calls.read_text().splitlines()] == [["-m", "harness.quant.zygote"]]  # one start
    assert list(logs.glob("quant-zygote-*.log"))  # the zygote's own log, beside the builds'

    with pytest.raises(HarnessError, match=r"(?s)quantization failed \(exit 1\).*RuntimeError: boom"):
        run_quantization(_spec(tmp_path / "c", "fail"), interp, logs / "c.log", log=lambda m: None)
    with pytest.raises(HarnessError, match=r"(?s)quantization failed \(killed by signal 9\).*out of CPU memory"):
        run_quantization(_spec(tmp_path / "d", "die"), interp, logs / "d.log", log=lambda m: None)
    assert zygote.alive()  # a failed build is not the zygote's end
    pid = zygote.proc.pid
    zygote.close()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_an_interpreter_that_cannot_serve_is_asked_once_then_runs_each_build_as_a_plain_child(tmp_path, own_zygotes):
    interp, calls = _interp(tmp_path, refuse=True)
    for name in ("a", "b"):
        run_quantization(_spec(tmp_path / name), interp, tmp_path / f"{name}.log", log=lambda m: None)
        assert (tmp_path / name / "harness_quantization.json").exists()
        assert (tmp_path / f"{name}.log").read_text().split()[:2] == ["parent", str(os.getpid())]  # our own child
    assert [ln.split()[:2] for ln in calls.read_text().splitlines()] == [
        ["-m", "harness.quant.zygote"], ["-m", "harness.quant.quantize"], ["-m", "harness.quant.quantize"]]


def test_no_zygote_where_a_gpu_is_visible_off_linux_or_when_switched_off(monkeypatch):
    monkeypatch.setattr(qz.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(qz.ENV_SWITCH, raising=False)
    assert qz.gpu_visible() and not qz.enabled()  # CUDA cannot be used in a process forked after its start
    assert qz.spawner(sys.executable, {}, Path("s"), Path("l")) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not qz.gpu_visible() and qz.enabled()
    monkeypatch.setattr(qz.glob, "glob", lambda pattern: [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert qz.enabled()
    monkeypatch.setenv(qz.ENV_SWITCH, "0")
    assert not qz.enabled()
    monkeypatch.delenv(qz.ENV_SWITCH)
    monkeypatch.setattr(qz.sys, "platform", "darwin")
    assert not qz.enabled()


def test_a_gate_that_will_build_starts_the_quantization_interpreter_before_preparing_its_data(tmp_path, monkeypatch,
                                                                                                  own_zygotes):
    """A gate warms the quantization interpreter up before it prepares the data (preflight), so that its import
    overlaps it; only where a build is ahead: nothing cached for the model, recipe and calibration."""
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    interp, calls = _interp(tmp_path)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "empty-cache"))
    s = GateSession(load_config(), quiet=True, quant_python=interp.python)
    try:
        assert s.provider.warm_up() is True
        assert s._prepared == {}  # before any data
        (zygote,) = [z for k, z in qz._zygotes.items() if k[0] == interp.python]
        assert zygote.ready.wait(30) and zygote.alive()
        assert calls.read_text().split()[:2] == ["-m", "harness.quant.zygote"]  # (its first line, once it is up)
        assert s.provider.warm_up() is True  # again: the same one
        assert [z for k, z in qz._zygotes.items() if k[0] == interp.python] == [zygote]
    finally:
        s.close()
    monkeypatch.setenv(qz.ENV_SWITCH, "0")
    s = GateSession(load_config(), quiet=True, quant_python=interp.python)
    assert s.provider.warm_up() is False


def test_no_warm_up_where_the_checkpoint_is_cached(tiny_checkpoint, tmp_path, own_zygotes):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    interp, calls = _interp(tmp_path)
    s = GateSession(load_config(), quiet=True, quant_python=interp.python)  # the suite's cache holds its entry
    assert s.provider.warm_up() is False and not [k for k in qz._zygotes if k[0] == interp.python]


def test_the_warm_up_comes_after_the_input_checks_and_before_the_data(tmp_path, monkeypatch):
    """preflight starts the quantization interpreter once the recipe, the backend's libraries and the report folder
    passed (refused input starts nothing), and before it prepares the data (the import overlaps it)."""
    from harness.config.load import load_config
    from harness.errors import HarnessError as Refused
    from harness.session.gate import GateSession
    from harness.stages.provide import CheckpointProvider

    order = []
    prepared = GateSession.prepared
    monkeypatch.setattr(CheckpointProvider, "warm_up", lambda self: order.append("warm up") or True)
    monkeypatch.setattr(GateSession, "prepared", lambda self, name: order.append("prepare") or prepared(self, name))
    (tmp_path / "a-file").write_text("not a folder")
    s = GateSession(load_config(), quiet=True)
    try:
        with pytest.raises(Refused, match="report folder"):
            s.preflight(tmp_path / "a-file" / "reports")
        assert order == []
        s.preflight(tmp_path / "reports")
    finally:
        s.close()
    assert order[0] == "warm up" and order[1:] and set(order[1:]) == {"prepare"}


def test_a_warm_up_that_cannot_tell_leaves_the_error_to_the_stage_that_reports_it(tmp_path, monkeypatch, own_zygotes):
    """Warm-up is an optimisation inside preflight: whatever goes wrong there (a hub lookup without network) is not
    its to report; the stage that needs it says what to do."""
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    interp, calls = _interp(tmp_path)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "empty-cache"))
    s = GateSession(load_config(), quiet=True, quant_python=interp.python)

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(s.provider, "_model_identity", offline)
    assert s.provider.warm_up() is False and not [k for k in qz._zygotes if k[0] == interp.python]
