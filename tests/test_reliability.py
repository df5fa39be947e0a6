"""Faults and bad input: each gives a clear error and leaves nothing half-written (see the README's table)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from harness.config.load import load_config
from harness.errors import BackendError, ConfigError, HarnessError
from harness.session.gate import GateSession

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "harness.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            **kw)


def test_unknown_dataset_name_lists_the_known_ones(capsys):
    from harness.cli.main import main

    assert main(["score", "--dataset", "c4"]) == 2
    assert "unknown dataset 'c4'; known datasets: ultrachat, wikitext2" in capsys.readouterr().err


def test_missing_model_path_is_a_config_error():
    cfg = load_config()
    cfg.model.path = "./checkpoints/never-written"
    with pytest.raises(ConfigError, match="model.path './checkpoints/never-written' does not exist"):
        GateSession(cfg, quiet=True)


def test_unset_variable_in_a_model_path_is_named(monkeypatch, root):
    monkeypatch.delenv("HARNESS_SYNTH_DIR", raising=False)
    cfg = load_config(root / "configs/qwen2.5-72b-shape.yaml")
    with pytest.raises(ConfigError, match=r"model.path '\$\{HARNESS_SYNTH_DIR\}/bf16': an environment variable in "
                                          r"it is not set"):
        GateSession(cfg, quiet=True)


def test_checkpoint_dir_with_missing_shards(tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(ROOT / "harness/tiny/model", model)
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    cfg = load_config()
    cfg.model.path = str(model)
    s = GateSession(cfg, quiet=True)
    with pytest.raises(HarnessError, match=r"missing shard file\(s\) \['model-00002-of-00002.safetensors'\]"):
        s.checkpoint()
    with pytest.raises(HarnessError, match="missing shard"):
        s.score("wikitext2", "bf16")


def _recipe_variant(project, name, mutate) -> None:
    d = yaml.safe_load((project / "recipes/negative-control-w2.yaml").read_text())
    d["name"] = name
    mutate(d)
    (project / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(d))


@pytest.mark.own_quantization  # a build of its own is what it tests
def test_recipe_llmcompressor_rejects_fails_clearly_and_caches_nothing(project, tmp_path):
    _recipe_variant(project, "broken", lambda d: d.update(recipe="quant_stage:\n  quant_modifiers:\n"
                                                                 "    NoSuchModifier: {targets: [Linear]}\n"))
    cfg = load_config(project / "configs/tiny.yaml")
    cfg.cache_dir = str(tmp_path / "cache")
    s = GateSession(cfg, recipe="broken", quiet=True)
    with pytest.raises(HarnessError, match=r"(?s)quantization failed \(exit \d+\).*NoSuchModifier"):
        s.checkpoint()
    assert list((tmp_path / "cache/checkpoints").iterdir()) == []  # no entry, no temp dir, no spec file


def test_checkpoint_that_is_not_the_promised_scheme_is_refused(project, tmp_path, tiny_checkpoint, copy_quantizer):
    """A recipe that promises weight-only NVFP4A16 but whose quantization delivers W4A4 NVFP4 (the tiny default's
    checkpoint, copied in by a quantization double): refused, nothing cached; and an entry already in the cache under
    the same recipe text is refused the same way when the recipe's `scheme:` line changes."""
    _recipe_variant(project, "claims-a16", lambda d: d.update(scheme="NVFP4A16"))
    cfg = load_config(project / "configs/tiny.yaml")
    cfg.cache_dir = str(tmp_path / "cache")
    s = GateSession(cfg, recipe="claims-a16", quiet=True, quant_python=copy_quantizer(tiny_checkpoint))
    with pytest.raises(HarnessError, match="expected a compressed-tensors NVFP4A16 checkpoint, found NVFP4"):
        s.checkpoint()
    assert list((tmp_path / "cache/checkpoints").iterdir()) == []  # no entry, no temp dir, no spec file
    _recipe_variant(project, "honest", lambda d: d.update(scheme="NVFP4"))  # the same recipe text, built and cached
    ck = GateSession(cfg, recipe="honest", quiet=True, quant_python=copy_quantizer(tiny_checkpoint)).checkpoint()
    assert ck.cache_hit is False
    with pytest.raises(HarnessError, match="expected a compressed-tensors NVFP4A16 checkpoint, found NVFP4"):
        GateSession(cfg, recipe="claims-a16", quiet=True, quant_python=copy_quantizer(tiny_checkpoint)).checkpoint()


def test_fewer_texts_than_requested_says_how_many(caplog):
    cfg = load_config()
    cfg.datasets["ultrachat"].n_texts = 5000  # the tiny test split has 300 rows
    lines = []
    s = GateSession(cfg, log=lines.append)
    p = s.prepared("ultrachat")
    assert p.stats.selected == 300 and p.stats.kept_texts == 300
    assert any("only 300 usable texts, 5000 requested" in ln for ln in lines)


def _fake_vllm(monkeypatch, error: Exception):
    @dataclasses.dataclass
    class EngineArgs:
        gpu_memory_utilization: float = 0.9
        max_num_batched_tokens: int | None = None
        tensor_parallel_size: int = 1
        cpu_offload_gb: float = 0

    def LLM(**kw):  # noqa: N802 - the real name
        raise error

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.__version__ = LLM, "fake"
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.engine", types.ModuleType("vllm.engine"))
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", arg_utils)


def test_gpu_out_of_memory_names_the_knobs(monkeypatch):
    from harness.backends import EngineSpec
    from harness.backends.vllm import VLLMBackend

    _fake_vllm(monkeypatch, RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    spec = EngineSpec(model="m", precision="bf16", max_model_len=2048, engine_kwargs={"gpu_memory_utilization": 0.9})
    with pytest.raises(BackendError) as e:
        VLLMBackend(spec)
    msg = str(e.value)
    assert "GPU out of memory while starting the bf16 engine" in msg
    for knob in ("gpu_memory_utilization", "max_num_batched_tokens", "tensor_parallel_size", "cpu_offload_gb"):
        assert knob in msg
    _fake_vllm(monkeypatch, RuntimeError("Engine core initialization failed. See root cause above."))
    with pytest.raises(BackendError, match="(?s)could not start the bf16 engine.*root cause.*cpu_offload_gb"):
        VLLMBackend(spec)
    _fake_vllm(monkeypatch, ValueError("model architecture not supported"))  # neither: one message with the cause
    with pytest.raises(BackendError, match="could not start the bf16 engine for m: ValueError: model architecture "
                                           "not supported") as e:
        VLLMBackend(spec)
    assert "gpu_memory_utilization" not in str(e.value)  # not dressed up as a memory problem


def test_two_gates_at_once_build_the_entry_once(tmp_path, tiny_checkpoint, copy_quantizer):
    """Two `harness quantize` at once on an empty cache: one builds (a quantization double that takes 3 s and copies the
    run's checkpoint: the lock is what is tested, not llm-compressor), the other waits, says for whom, and reuses it."""
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "HARNESS_QUANT_PYTHON": copy_quantizer(tiny_checkpoint, 3.0)}
    procs = [_cli("quantize", env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    infos = [json.loads(o) for o, _ in outs]
    assert infos[0]["path"] == infos[1]["path"]
    assert sorted(i["cache_hit"] for i in infos) == [False, True]  # one built it, the other reused it
    waiter = next(err for (o, err), i in zip(outs, infos) if i["cache_hit"])
    builder = next(p.pid for p, i in zip(procs, infos) if not i["cache_hit"])
    assert re.search(rf"waiting for pid {builder} on \S+ since \S+ \(building \w+\) to finish", waiter), waiter
    assert len(list((tmp_path / "cache/checkpoints").iterdir())) == 1  # one entry, nothing else
