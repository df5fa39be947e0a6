"""harness synth-checkpoint: the NVFP4 layout is what compressed-tensors reads, the BF16 view is that checkpoint's
exact dequantization, nothing is half-written, and the 72B shape has Qwen2.5-72B's published size."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.checkpoint import dequantized_weights
from harness.models.synth import SynthSpec, resolve_shape, tensor_plan
from harness.models.synth_write import write_checkpoint, write_dequant_view

SHAPE = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
         "tie_word_embeddings": False, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    info = write_checkpoint(SynthSpec(config=SHAPE, precision="nvfp4", seed=3), root / "nvfp4", device="cpu",
                            shard_gb=0.0001, progress=False)  # ~105 KiB shards: several, with an index
    write_dequant_view(root / "nvfp4", root / "bf16")
    return root, info


def test_nvfp4_tensors_decode_with_compressed_tensors_to_a_close_copy_of_the_gaussian(synth):
    import torch
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    root, info = synth
    assert info["shards"] > 1 and (root / "nvfp4" / "model.safetensors.index.json").exists()
    mine = dict(dequantized_weights(root / "nvfp4"))
    raw = _tensors(root / "nvfp4")
    args = QuantizationArgs(num_bits=4, type="float", symmetric=True, group_size=16, strategy="tensor_group",
                            scale_dtype=torch.float8_e4m3fn)
    plan = [p for p in tensor_plan(SHAPE) if p.kind == "linear"]
    assert len(plan) == 2 * 7  # q k v o gate up down per layer; lm_head is ignored
    for p in plan:
        mod = p.name.rpartition(".")[0]
        packed = raw[f"{mod}.weight_packed"]
        assert packed.dtype == torch.uint8 and packed.shape == (p.shape[0], p.shape[1] // 2)
        assert raw[f"{mod}.weight_scale"].dtype == torch.float8_e4m3fn
        x = unpack_fp4_from_uint8(packed, p.shape[0], p.shape[1])  # compressed-tensors' own reader
        ref = dequantize(x_q=x, scale=raw[f"{mod}.weight_scale"].to(x.dtype), args=args,
                         global_scale=raw[f"{mod}.weight_global_scale"], dtype=x.dtype)
        assert torch.equal(ref, mine[p.name])
        gauss = _gauss(p.name)
        # the global scale is 448 * 6 / amax of the drawn weights (the NVFP4 recipe's rule); layers vLLM fuses
        # (q/k/v, gate/up) share one, from the largest amax among them, as llm-compressor writes them
        parent, _, proj = mod.rpartition(".")
        siblings = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gu", "up_proj": "gu"}
        group = [f"{parent}.{q}.weight" for q, g in siblings.items() if g == siblings.get(proj)] or [p.name]
        amax = max(_gauss(n).abs().max().item() for n in group)
        assert raw[f"{mod}.weight_global_scale"].item() == pytest.approx(448 * 6 / amax, rel=4e-3)  # bf16 draw
        assert len({raw[n.replace(".weight", ".weight_global_scale")].item() for n in group}) == 1
        rel_rms = ((ref.float() - gauss).pow(2).mean() / gauss.pow(2).mean()).sqrt().item()
        assert 0.02 < rel_rms < 0.2, (p.name, rel_rms)  # 4-bit: close, not equal
    assert not any(k.startswith("lm_head.") and k != "lm_head.weight" for k in raw)


def _gauss(name: str):
    """The seeded draw of one weight, written unquantized (--precision bf16)."""
    from harness.models.synth import synth_tensors

    p = next(q for q in tensor_plan(SHAPE) if q.name == name)
    return synth_tensors(p, SynthSpec(config=SHAPE, precision="bf16", seed=3), "cpu")[name].float()


def test_transformers_reads_it_as_an_nvfp4_checkpoint(synth):
    from transformers import AutoModelForCausalLM

    from harness.checkpoint import checkpoint_quantization, check_shards

    root, _ = synth
    check_shards(root / "nvfp4")
    assert checkpoint_quantization(root / "nvfp4")["scheme"] == "NVFP4"
    m = AutoModelForCausalLM.from_pretrained(root / "nvfp4")
    scheme = m.model.layers[0].mlp.down_proj.quantization_scheme
    assert (scheme.weights.num_bits, scheme.weights.group_size, scheme.input_activations.num_bits) == (4, 16, 4)


def test_bf16_view_scores_exactly_like_a_bf16_checkpoint_of_the_dequantized_weights(synth, tmp_path):
    """The view (no weights on disk) against a plain checkpoint that transformers writes and reads itself."""
    import random

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.backends import EngineSpec, backend_class

    root, _ = synth
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(root / "bf16"), dtype=torch.bfloat16)
    plain.load_state_dict(dict(dequantized_weights(root / "nvfp4")))
    plain.save_pretrained(tmp_path / "plain")
    rng = random.Random(0)
    docs = [[rng.randrange(512) for _ in range(rng.randrange(20, 60))] for _ in range(6)]
    sums = {}
    for name, path in (("view", root / "bf16"), ("plain", tmp_path / "plain")):
        eng = backend_class("hf")(EngineSpec(model=str(path), precision="bf16", max_model_len=128,
                                             engine_kwargs={"dtype": "bfloat16"}))
        sums[name] = [r.logprob_sum for r in eng.loglikelihood_rolling(docs)]
    assert sums["view"] == sums["plain"]
    assert all(math.isfinite(x) for x in sums["view"])


def test_72b_shape_has_the_published_parameter_count():
    from harness.models.synth import nbytes

    config, source = resolve_shape("Qwen/Qwen2.5-72B-Instruct")
    assert "harness.models.shapes" in source
    plan = tensor_plan(config)
    h, kv, inter, vocab, layers = 8192, 1024, 29568, 152064, 80
    per_layer = 2 * h * h + 2 * h * kv + (h + 2 * kv) + 3 * h * inter + 2 * h  # q,o + k,v + biases + mlp + norms
    assert sum(math.prod(p.shape) for p in plan) == 2 * vocab * h + layers * per_layer + h == 72_706_203_648
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    assert nbytes(plan, "nvfp4") == linear // 2 + linear // 16 + 8 * 7 * layers + 2 * (72_706_203_648 - linear)
    assert 44e9 < nbytes(plan, "nvfp4") < 45e9 and nbytes(plan, "bf16") == 2 * 72_706_203_648


def test_refuses_an_existing_output_a_full_disk_and_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    spec = SynthSpec(config=SHAPE)
    (tmp_path / "taken").mkdir()
    with pytest.raises(HarnessError, match="exists; pass --force"):
        write_checkpoint(spec, tmp_path / "taken", device="cpu", progress=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(HarnessError, match=r"needs 0\.0 GiB, .* has 0\.0 GiB free; write it elsewhere"):
        write_checkpoint(spec, tmp_path / "full", device="cpu", progress=False)
    monkeypatch.undo()

    import safetensors.torch

    calls = []

    def failing_save(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(*a, **k)

    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(spec, tmp_path / "half", device="cpu", shard_gb=0.0001, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no OUT, no temp dir


def test_resolve_shape_reads_a_config_file_or_dir_and_explains_what_it_accepts(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({**SHAPE, "quantization_config": {"x": 1}}))
    cfg, _ = resolve_shape(str(tmp_path))
    assert cfg["hidden_size"] == 64 and "quantization_config" not in cfg
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: set the constant
    with pytest.raises(HarnessError, match="not a known shape .*Qwen/Qwen2.5-72B-Instruct.*pass the path"):
        resolve_shape("nobody/no-such-model")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(HarnessError, match="no model_type"):
        resolve_shape(str(tmp_path / "bad.json"))


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_modelopt_layout_is_what_compressed_tensors_converts_to_the_same_checkpoint(synth, tmp_path):
    """The ModelOpt layout, run through compressed-tensors' own ModelOpt converter, gives back the compressed-tensors
    checkpoint of the same weights bit for bit (global scales to float32 rounding of a reciprocal)."""
    import torch
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter

    from harness.checkpoint import checkpoint_quantization

    root, _ = synth
    write_checkpoint(SynthSpec(config=SHAPE, precision="nvfp4", seed=3, layout="modelopt"), tmp_path / "mo",
                     device="cpu", progress=False)
    q = checkpoint_quantization(tmp_path / "mo")
    assert (q["quant_method"], q["format"], q["scheme"], q["ignore"]) == ("modelopt", "modelopt", "NVFP4", ["lm_head"])
    assert json.loads((tmp_path / "mo/config.json").read_text()).get("quantization_config") is None
    mo, ct = _tensors(tmp_path / "mo"), _tensors(root / "nvfp4")
    assert mo["model.layers.0.mlp.up_proj.weight"].dtype == torch.uint8 and "model.layers.0.mlp.up_proj.weight_scale_2" in mo
    quantized = {n.rpartition(".")[0] for n in mo if n.endswith(".weight_scale_2")}
    ignore = sorted({n.rpartition(".")[0] for n in mo if n.endswith(".weight")} - quantized)
    conv = ModelOptNvfp4Converter(ignore=ignore, targets=["Linear"]).process(dict(mo))
    assert set(conv) == set(ct)
    for k, t in ct.items():
        got = conv[k].reshape(t.shape)
        if t.dtype == torch.float32:
            assert torch.allclose(got, t, rtol=1e-6), k
        else:
            assert torch.equal(got, t), k
    views = [dict(dequantized_weights(p)) for p in (tmp_path / "mo", root / "nvfp4")]
    assert all(torch.equal(views[0][k], views[1][k]) for k in views[1])


def test_hf_backend_runs_a_modelopt_checkpoint_like_its_compressed_tensors_twin(synth, tmp_path):
    import random

    from harness.backends import EngineSpec, backend_class

    root, _ = synth
    write_checkpoint(SynthSpec(config=SHAPE, precision="nvfp4", seed=3, layout="modelopt"), tmp_path / "mo",
                     device="cpu", progress=False)
    rng = random.Random(1)
    docs = [[rng.randrange(512) for _ in range(40)] for _ in range(4)]
    sums = {}
    for name, path in (("ct", root / "nvfp4"), ("modelopt", tmp_path / "mo")):
        eng = backend_class("hf")(EngineSpec(model=str(path), precision="nvfp4", max_model_len=64,
                                             engine_kwargs={"dtype": "bfloat16"}))
        try:
            sums[name] = sum(r.logprob_sum for r in eng.loglikelihood_rolling(docs))
            assert eng.info()["kernel"] == "hf-fake-quant W4A4"
        finally:
            eng.close()
    assert abs(sums["ct"] - sums["modelopt"]) / abs(sums["ct"]) < 1e-3, sums
