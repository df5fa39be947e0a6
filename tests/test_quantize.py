from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from harness.quant.cache import CheckpointCache, interpreter_versions
from harness.errors import HarnessError
from harness.quant.quantize import CalibrationSpec, QuantInterpreter, QuantSpec, run_quantization


def _spec(out) -> QuantSpec:
    return QuantSpec(model="m", recipe="x: 1", output_dir=str(out),
                     calibration=CalibrationSpec(path="parquet", split="train", samples=1, max_seq_len=8, seed=0))


def test_missing_interpreter_is_a_clear_error(tmp_path):
    interp = QuantInterpreter(python=str(tmp_path / "no-such-python"))
    with pytest.raises(HarnessError, match="quantization interpreter not found.*HARNESS_QUANT_PYTHON"):
        interpreter_versions(interp)
    with pytest.raises(HarnessError, match="quantization interpreter not found"):
        run_quantization(_spec(tmp_path / "out"), interp, tmp_path / "q.log")


def test_interpreter_without_llmcompressor_is_named(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"llmcompressor\": null, \"compressed-tensors\": null}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(HarnessError, match="llmcompressor is not installed in the quantization interpreter"):
        interpreter_versions(QuantInterpreter(python=str(fake)))


def test_crashing_quantization_leaves_no_cache_entry(tmp_path, monkeypatch):
    # a plain child (a zygote's build that crashes: test_quant_zygote.py); asking this stand-in to serve as a warm
    # interpreter would only close the run's warm one to make room
    monkeypatch.setenv("HARNESS_QUANT_ZYGOTE", "0")
    crash = tmp_path / "python"  # a quantization interpreter that writes half a checkpoint, then dies
    crash.write_text(f"#!{sys.executable}\n"
                     "import json, sys\n"
                     "out = json.load(open(sys.argv[4]))['output_dir']\n"
                     "open(out + '/model-00001-of-00002.safetensors', 'w').write('half')\n"
                     "sys.stderr.write('Traceback: boom\\n'); sys.exit(3)\n")
    crash.chmod(crash.stat().st_mode | stat.S_IEXEC)
    cache = CheckpointCache(tmp_path / "cache")

    def build(tmp):
        assert tmp.is_dir() and not any(tmp.iterdir())  # an empty folder to fill
        return run_quantization(_spec(tmp), QuantInterpreter(python=str(crash)), cache.log_path("k1"))

    with pytest.raises(HarnessError, match=r"(?s)quantization failed \(exit 3\).*log: .*k1-.*\.log.*boom"):
        cache.get_or_build("k1", {"material": 1}, build, log=lambda m: None)
    assert not cache.entry("k1").exists()
    assert list(cache.root.iterdir()) == []  # no temp dir, no spec file (locks live in cache/locks)
    assert cache.entries() == []


def test_child_gets_its_own_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/vllm/site")
    env = QuantInterpreter(pythonpath="/tmp/site_q:/tmp/site_c").env()
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[1:] == ["/tmp/site_q", "/tmp/site_c"] and "/vllm/site" not in parts
    assert parts[0].endswith("main") or (os.path.isdir(os.path.join(parts[0], "harness")))


def test_an_env_without_llmcompressor_gates_from_the_cache(tmp_path):
    """A vLLM-only environment: the cached checkpoint serves whatever llm-compressor built it; nothing cached is the
    same clear error as before."""
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    built = GateSession(load_config(), quiet=True).checkpoint().path  # the session's cache, built once per run
    no_llmc = tmp_path / "python"
    no_llmc.write_text("#!/bin/sh\necho '{\"llmcompressor\": null, \"compressed-tensors\": null}'\n")
    no_llmc.chmod(no_llmc.stat().st_mode | stat.S_IEXEC)
    lines = []
    ck = GateSession(load_config(), log=lines.append, quant_python=str(no_llmc)).checkpoint()
    path, info = ck.path, ck.info
    assert path == built and info["cache_hit"] is True
    assert any("no quantization interpreter here (llmcompressor is not installed" in ln for ln in lines)
    cfg = load_config()
    cfg.cache_dir = str(tmp_path / "empty-cache")
    with pytest.raises(HarnessError, match="llmcompressor is not installed in the quantization interpreter"):
        GateSession(cfg, quiet=True, quant_python=str(no_llmc)).checkpoint()



def test_the_calibration_arithmetic_reaches_the_build_and_only_a_setting_off_its_default_changes_the_key(
        tmp_path, tiny_checkpoint, copy_quantizer):
    """``quantize.cpu_matmul`` (default fp32): the run's own llm-compressor build of the tiny default calibrated
    through the widened functions (its record counts them); the setting reaches the child's spec; ``native`` is a
    cache entry of its own, while the default keeps the keys that entries had before the setting existed."""
    import hashlib
    import json

    from harness.quant.cache import KEY_VERSION, cache_key
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    rec = json.loads((Path(tiny_checkpoint) / "harness_quantization.json").read_text())
    assert rec["cpu_matmul"]["setting"] == "fp32" and rec["cpu_matmul"]["widened_calls"] > 0
    old = {"key_version": KEY_VERSION, "model": {"m": 1}, "recipe": "r", "calibration": {}, "versions": {}}
    before = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:20]  # the key as it was made
    assert cache_key({"m": 1}, "r", {}, {})[0] == before != cache_key({"m": 1}, "r", {}, {}, {"cpu_matmul": "native"})[0]
    got = {}
    for setting in ("fp32", "native"):
        cfg = load_config(overrides={"quantize.cpu_matmul": setting})
        cfg.cache_dir = str(tmp_path / "cache")
        ck = GateSession(cfg, quiet=True, quant_python=copy_quantizer(tiny_checkpoint)).checkpoint()
        assert ck.cache_hit is False
        spec = json.loads((Path(ck.path) / "harness_quantization.json").read_text())["spec"]
        got[setting] = (Path(ck.path).name, spec["cpu_matmul"])
    assert got["fp32"][1] == "fp32" and got["native"][1] == "native" and got["fp32"][0] != got["native"][0]


def test_an_entry_built_before_builds_recorded_their_calibration_arithmetic_is_rebuilt(tmp_path):
    """A setting at its default stays out of the key, so an entry built on a CPU-only torch before 2026-11-30
    (calibrated with torch's bf16 kernels; no cpu_matmul in its record) has the key of an fp32 build: it is rebuilt,
    and says why. A GPU build, a recorded one, or a config that asks for native is used as it is."""
    from harness.stages.provide import stale_build

    old_cpu, old_gpu = {"versions": {"torch": "2.13.0+cpu"}}, {"versions": {"torch": "2.11.0+cu130"}}
    new = {"versions": {"torch": "2.13.0+cpu"}, "cpu_matmul": {"setting": "fp32", "widened_calls": 12}}
    assert "calibrated with torch's bf16 kernels" in stale_build(old_cpu, "fp32")
    assert stale_build(old_cpu, "native") is None and stale_build(old_gpu, "fp32") is None
    assert stale_build(new, "fp32") is None

    cache, said, builds = CheckpointCache(tmp_path / "cache"), [], []

    def build(record):
        def fill(tmp):
            builds.append(record)
            (tmp / "weights.bin").write_bytes(b"x" * 8)
            return record
        return fill

    stale = lambda built: stale_build(built, "fp32")  # noqa: E731
    cache.get_or_build("k", {"m": 1}, build(old_cpu), log=said.append)          # what an old harness left
    path, hit = cache.get_or_build("k", {"m": 1}, build(new), log=said.append, stale=stale)
    assert not hit and builds == [old_cpu, new] and any("will be rebuilt: built before" in s for s in said), said
    assert cache.get_or_build("k", {"m": 1}, build(new), log=said.append, stale=stale) == (path, True)
