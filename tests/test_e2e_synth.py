"""The sizing workflow end to end on CPU, as the README gives it: synth-checkpoint (NVFP4 + its BF16 view), a BF16
baseline, then `harness gate` on the existing checkpoint: no quantization, the scheme read off the checkpoint."""
from __future__ import annotations

import json

import yaml

from harness.cli.main import main

SHAPE = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
         "tie_word_embeddings": True, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}


def test_gate_an_existing_synthetic_checkpoint(tmp_path, root, capsys, monkeypatch):
    (tmp_path / "shape.json").write_text(json.dumps(SHAPE))
    assert main(["synth-checkpoint", "--like", str(tmp_path / "shape.json"), "--bf16-view", str(tmp_path / "bf16"),
                 "--device", "cpu", str(tmp_path / "nvfp4")]) == 0
    capsys.readouterr()
    cfg = yaml.safe_load((root / "configs/tiny.yaml").read_text())
    cfg["name"] = "synth-tiny"
    cfg["model"].update(path=str(tmp_path / "bf16"), checkpoint=str(tmp_path / "nvfp4"), tokenizer="builtin:tiny")
    for d in cfg["datasets"].values():
        d["n_texts"] = 20
    cfg.update(baselines_dir=str(tmp_path / "baselines"), reports_dir=str(tmp_path / "reports"),
               cache_dir=str(tmp_path / "cache"))
    del cfg["calibration"]
    (tmp_path / "pyproject.toml").write_text("")
    conf = tmp_path / "synth.yaml"
    conf.write_text(yaml.safe_dump(cfg))

    assert main(["gate", "--config", str(conf)]) == 2  # no baseline yet: refused before any engine starts
    assert "create it with" in capsys.readouterr().err
    assert main(["baseline", "update", "--config", str(conf)]) == 0
    capsys.readouterr()
    assert main(["gate", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "GATE PASSED" in out
    rep = json.loads(next((tmp_path / "reports").glob("*-synth-tiny-checkpoint/report.json")).read_text())
    nv = rep["checkpoints"]["nvfp4"]
    assert nv["existing"] is True and nv["scheme"] == "NVFP4" and nv["path"] == str(tmp_path / "nvfp4")
    assert rep["scheme"] == "NVFP4" and rep["recipe"] == "checkpoint"
    assert "hf-fake-quant W4A4" in rep["kernel"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))  # nothing quantized
    assert rep["checkpoints"]["bf16"]["view_of"] == str(tmp_path / "nvfp4")
    # the same checkpoint named on the command line, and a gate that must fail
    assert main(["gate", "--config", str(conf), "--checkpoint", str(tmp_path / "nvfp4"), "--min-score", "100.5"]) == 1
    assert "GATE FAILED" in capsys.readouterr().out
    assert main(["gate", "--config", str(conf), "--recipe", "nvfp4"]) == 2
    assert "drop --recipe or model.checkpoint" in capsys.readouterr().err
    # the same weights in NVIDIA ModelOpt's layout: read off its hf_quant_config.json, gated the same way
    assert main(["synth-checkpoint", "--like", str(tmp_path / "shape.json"), "--layout", "modelopt", "--device", "cpu",
                 str(tmp_path / "modelopt")]) == 0
    capsys.readouterr()
    assert main(["gate", "--config", str(conf), "--checkpoint", str(tmp_path / "modelopt")]) == 0
    assert "GATE PASSED" in capsys.readouterr().out
    rep = json.loads(max((tmp_path / "reports").glob("*/report.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert (rep["checkpoints"]["nvfp4"]["layout"], rep["scheme"]) == ("modelopt", "NVFP4")
