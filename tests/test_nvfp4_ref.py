"""The independent NVFP4 reference (harness/reference/nvfp4.py): its arithmetic on hand-computed cases, then against what
llm-compressor writes and what the hf backend computes, on the tiny model and on real weights (SmolLM2-135M)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.reference import nvfp4 as R

from harness.reference import checkpoints as RC

ROOT_CFG = "configs/tiny.yaml"


# ---- the format, by hand ---------------------------------------------------------------------------------------------
def test_e2m1_rounds_to_nearest_with_ties_to_the_even_mantissa_and_saturates():
    x = [0.24, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 7.0, 100.0, -0.75, -2.6]
    # ties: 0.25 -> 0 (0.0 has mantissa 0), 0.75 -> 1.0 (not 0.5 = 1.0b x 2^-1), 1.25 -> 1.0, 1.75 -> 2.0, 2.5 -> 2.0,
    # 3.5 -> 4.0, 5.0 -> 4.0; above 5 -> 6, and 6 is the largest
    want = [0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, -1.0, -3.0]
    assert R.e2m1_values(R.e2m1_codes(x)).tolist() == want
    assert R.e2m1_codes([-0.0, 6.0, -6.0]).tolist() == [0b1000, 0b0111, 0b1111]  # sign bit 3, index 0..7


def test_e4m3_table_and_rounding_follow_the_definition():
    t = R.e4m3_table()
    assert t[0x38] == 1.0 and t[0x7E] == 448.0 and t[0x08] == 2.0 ** -6 and t[0x01] == 2.0 ** -9
    assert t[0x00] == 0.0 and t[0xB8] == -1.0 and math.isnan(t[0x7F]) and math.isnan(t[0xFF])
    # 1.0625 is halfway between 1.0 (mantissa 000) and 1.125 (001): even -> 1.0; 1.1875 between 1.125 and 1.25 (010)
    assert R.round_e4m3([1.0625, 1.1875, 449.0, 1e6, -300.0, 2.0 ** -10]).tolist() == [1.0, 1.25, 448.0, 448.0, -288.0,
                                                                                     0.0]
    assert R.decode_e4m3(np.array([0x38, 0x7E], dtype=np.uint8)).tolist() == [1.0, 448.0]


def test_bf16_rounding_is_to_nearest_even():
    one = np.float32(1.0)
    assert R.round_bf16([one + np.float32(2.0 ** -8)]).tolist() == [1.0]            # tie -> even (1.0)
    assert R.round_bf16([one + np.float32(3 * 2.0 ** -9)]).tolist() == [1.0 + 2.0 ** -7]
    assert R.round_bf16([np.float32(934.95654)]).tolist() == [936.0]                # spacing 4 between 512 and 1024


def test_a_block_quantizes_as_worked_out_by_hand():
    # one block of 16 with amax 6: g = 448 x 6 / 6 = 448, the block scale E4M3(6 / 6 x 448) = 448, step 448 / 448 = 1,
    # so the codes are E2M1 of the values themselves
    x = np.array([[6.0, -3.0, 1.5, 0.2, 0.74, 0.76, 2.4, -5.5, 0.0, 1.0, 4.1, -0.5, 3.0, 2.0, 1.26, 0.1]])
    g = R.global_scale(6.0)
    assert g == np.float32(448.0)
    codes, s = R.quantize(x, g)
    assert s.tolist() == [[448.0]]
    assert R.dequantize(codes, s, g).tolist() == [[6.0, -3.0, 1.5, 0.0, 0.5, 1.0, 2.0, -6.0, 0.0, 1.0, 4.0, -0.5, 3.0,
                                                   2.0, 1.5, 0.0]]
    # halve the tensor's amax elsewhere (12): g = 224, scale E4M3(6 / 6 x 224) = 224, step 1 again
    codes2, s2 = R.quantize(x, R.global_scale(12.0))
    assert s2.tolist() == [[224.0]] and (codes2 == codes).all()


def test_torch_bf16_arithmetic_rounds_where_torch_does():
    # 448 x 6 / 2.59375 = 1036.34; torch computes 2688 / t on a bf16 tensor as bf16(1 / t) x 2688 -> 1034.25 -> 1032
    assert R.global_scale(2.59375) == np.float32(2688.0) / np.float32(2.59375)
    assert R.global_scale(2.59375, "torch-bf16") == np.float32(1032.0)
    with pytest.raises(ValueError, match="unknown arithmetic"):
        R.global_scale(1.0, "fp8")


def test_fused_groups_share_one_global_scale():
    names = {"m.layers.0.self_attn.q_proj", "m.layers.0.self_attn.k_proj", "m.layers.0.self_attn.v_proj",
             "m.layers.0.self_attn.o_proj", "m.layers.0.mlp.gate_proj", "m.layers.0.mlp.up_proj"}
    assert R.fused_group("m.layers.0.self_attn.k_proj", names) == [
        "m.layers.0.self_attn.q_proj", "m.layers.0.self_attn.k_proj", "m.layers.0.self_attn.v_proj"]
    assert R.fused_group("m.layers.0.mlp.up_proj", names) == ["m.layers.0.mlp.gate_proj", "m.layers.0.mlp.up_proj"]
    assert R.fused_group("m.layers.0.self_attn.o_proj", names) == ["m.layers.0.self_attn.o_proj"]


def test_safetensors_round_trip_without_torch(tmp_path):
    a = np.array([[1.0, -2.5, 3.0078125, 1e-3]], dtype=np.float32)
    RC.write_bf16_safetensors(tmp_path / "x.safetensors", {"w": a})
    got = RC.SafetensorsFile(tmp_path / "x.safetensors").get("w")
    assert got.tolist() == R.round_bf16(a).tolist()
    from safetensors.torch import load_file

    assert load_file(tmp_path / "x.safetensors")["w"].float().numpy().tolist() == got.tolist()  # torch reads it alike


@pytest.mark.parametrize("arithmetic", ["exact", "torch-bf16"])
def test_torch_activation_fake_quantization_equals_the_numpy_reference(arithmetic):
    import torch

    from harness.backends.fake_quant import fake_quantize

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 128)) * rng.uniform(0.01, 30, (64, 1))).astype(np.float32)
    x[3, :16] = 0.0  # an all-zero block
    xb = torch.tensor(x).to(torch.bfloat16)
    g = float(R.global_scale(float(np.abs(xb.float().numpy()).max())))
    got = fake_quantize(xb, g, arithmetic).float().numpy()
    w = xb.float().numpy().astype(np.float64)
    want = R.dequantize(*R.quantize(w, g, arithmetic), g)
    np.testing.assert_array_equal(got, R.round_bf16(want.astype(np.float32)))


# ---- against llm-compressor and the hf backend ------------------------------------------------------------------------
def _check_checkpoint(bf16_dir, ckpt_dir) -> dict:
    bf16, ck = RC.open_checkpoint(bf16_dir), RC.open_checkpoint(ckpt_dir)
    mods = sorted(k[: -len(".weight_packed")] for k in ck if k.endswith(".weight_packed"))
    tot = {"layers": 0, "elements": 0, "blocks": 0}
    for a in R.ARITHMETIC:
        tot[a] = {"global_scale_matches": 0, "scale_mismatches": 0, "code_mismatches": 0}
    err = {"checkpoint": 0.0, "definition": 0.0}
    amax = RC.fused_amax(bf16, mods)

    def check(m):
        return RC.check_layer(bf16[f"{m}.weight"].get(f"{m}.weight"), ck[f"{m}.weight_packed"].get(f"{m}.weight_packed"),
                             ck[f"{m}.weight_scale"].get(f"{m}.weight_scale"),
                             float(ck[f"{m}.weight_global_scale"].get(f"{m}.weight_global_scale").reshape(-1)[0]),
                             amax[m])

    for r in RC.each(check, mods):
        tot["layers"] += 1
        tot["elements"] += r["elements"]
        tot["blocks"] += r["blocks"]
        for a in R.ARITHMETIC:
            for k in tot[a]:
                tot[a][k] += r[a][k]
        err["checkpoint"] += r["error_rms_checkpoint"] ** 2 * r["elements"]
        err["definition"] += r["error_rms_definition"] ** 2 * r["elements"]
    tot["error_rms"] = {k: math.sqrt(v / tot["elements"]) for k, v in err.items()}
    return tot


def _assert_bit_exact(tot):
    t = tot["torch-bf16"]
    assert tot["layers"] > 0
    assert t == {"global_scale_matches": tot["layers"], "scale_mismatches": 0, "code_mismatches": 0}, tot


def _hf_doc_sums(path, docs, max_len):
    from harness.backends import EngineSpec, make_backend

    eng = make_backend("hf", EngineSpec(model=str(path), precision="nvfp4", max_model_len=max_len,
                                        engine_kwargs={"dtype": "bfloat16", "threads": 2}))
    try:
        return [r.nll_sum for r in eng.loglikelihood_rolling(docs)], eng.info()["kernel"]
    finally:
        eng.close()


def test_tiny_checkpoint_is_the_reference_bit_for_bit_and_the_hf_backend_computes_it(root, tmp_path):
    """llm-compressor's NVFP4 checkpoint of the tiny model: every global scale, FP8 block scale and FP4 code is what the
    reference gives under torch's bf16 arithmetic; a BF16 model carrying the reference's weights (and its activation
    quantization) scores every document exactly as the hf backend scores the checkpoint."""
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    s = GateSession(load_config(root / ROOT_CFG), quiet=True)
    try:
        ckpt = s.checkpoint().path
        docs = s.prepared("wikitext2").token_ids[:12]
    finally:
        s.close()
    bf16 = s.cfg.resolve(s.cfg.model.path)
    _assert_bit_exact(_check_checkpoint(bf16, ckpt))
    ref = tmp_path / "ref"
    RC.write_reference_model(bf16, ref, activations_from=ckpt, arithmetic="torch-bf16")
    got_ref, kernel_ref = _hf_doc_sums(ref, docs, 512)
    got_ck, kernel_ck = _hf_doc_sums(ckpt, docs, 512)
    assert "reference NVFP4 W4A4" in kernel_ref and "W4A4" in kernel_ck
    assert got_ref == got_ck


def test_the_reference_model_without_activations_is_weight_only_and_changes_the_score(root, tmp_path):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    s = GateSession(load_config(root / ROOT_CFG), quiet=True)
    try:
        docs = s.prepared("ultrachat").token_ids[:8]
    finally:
        s.close()
    bf16 = s.cfg.resolve(s.cfg.model.path)
    RC.write_reference_model(bf16, tmp_path / "w", arithmetic="exact")
    w, kernel = _hf_doc_sums(tmp_path / "w", docs, 512)
    b, _ = _hf_doc_sums(bf16, docs, 512)
    assert kernel == "dense" and w != b  # quantized weights, activations untouched
    assert abs(sum(w) - sum(b)) / abs(sum(b)) < 0.05  # NVFP4 weights on the tiny model: a small change


def test_the_reference_refuses_activations_from_a_weight_only_checkpoint(root, tmp_path):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    s = GateSession(load_config(root / ROOT_CFG), quiet=True, recipe="nvfp4a16")
    try:
        ckpt = s.checkpoint().path
    finally:
        s.close()
    with pytest.raises(ValueError, match="input_global_scale for 0 of"):
        RC.write_reference_model(s.cfg.resolve(s.cfg.model.path), tmp_path / "x", activations_from=ckpt)


@pytest.mark.real_weights("smollm2-135m")
def test_real_weights_checkpoint_is_the_reference_bit_for_bit(root, tmp_path_factory):
    """SmolLM2-135M from the package index, quantized by llm-compressor (NVFP4, a short calibration): all 210 Linears
    bit for bit under torch's bf16 arithmetic; the definition's exact arithmetic differs in a small share of scales
    and codes (llm-compressor rounds 448 x 6 / amax and amax / 6 to bf16), at the same error; and the hf backend
    scores short real texts exactly as the reference model does (weights and activations). NVFP4A16 quantizes the
    weights the same way (asserted on the H200 run, tests/gpu/test_real_weights.py, with its weight-only scores)."""
    import yaml

    from harness.config.load import load_config
    from harness.session.gate import GateSession

    proj = tmp_path_factory.mktemp("real")
    for d in ("configs", "recipes"):
        (proj / d).mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    cfg = yaml.safe_load((root / "configs/smollm2-135m-cpu.yaml").read_text())
    cfg["datasets"]["wikitext2"]["n_texts"] = 4
    cfg["model"]["max_model_len"] = 64  # a short text set: equality per document needs no more
    cfg["calibration"].update(samples=4, max_seq_len=64)
    cfg["calibration"]["data_files"] = str(root / "harness/texts/wikitext-2-raw-v1/test-00000-of-00001.parquet")
    (proj / "configs/real.yaml").write_text(yaml.safe_dump(cfg))
    s = GateSession(load_config(proj / "configs/real.yaml"), quiet=True, recipe="nvfp4")
    try:
        ck = s.checkpoint().path
        docs = s.prepared("wikitext2").token_ids
    finally:
        s.close()
    bf16 = s.cfg.resolve(s.cfg.model.path)
    tot = _check_checkpoint(bf16, ck)
    _assert_bit_exact(tot)
    assert tot["layers"] == 210 and tot["elements"] == 106_168_320
    ex = tot["exact"]
    assert 0 < ex["scale_mismatches"] < 0.05 * tot["blocks"] and 0 < ex["code_mismatches"] < 0.01 * tot["elements"]
    assert tot["error_rms"]["checkpoint"] == pytest.approx(tot["error_rms"]["definition"], rel=2e-3)
    ref = proj / "ref-w4a4"
    RC.write_reference_model(bf16, ref, activations_from=ck, arithmetic="torch-bf16")
    assert _hf_doc_sums(ref, docs, 64)[0] == _hf_doc_sums(ck, docs, 64)[0]
