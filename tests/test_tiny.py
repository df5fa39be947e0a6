"""The embedded tiny default: its data statistics are pinned (syrupy), and the build command works."""
from __future__ import annotations

import json

from harness.config.load import load_config
from harness.session.gate import GateSession


def test_tiny_dataset_statistics_are_pinned(snapshot):
    s = GateSession(load_config(), quiet=True)
    stats = {n: {k: v for k, v in s.prepared(n).summary().items() if k != "source"} for n in s.dataset_names}
    assert stats == snapshot


def test_shipped_baselines_match_the_prepared_data():
    s = GateSession(load_config(), quiet=True)
    for n in s.dataset_names:
        b = s.baseline(n)  # raises on any kept_texts / tokens / fingerprint mismatch
        assert b.has_documents and len(b.doc_nll_sums) == b.kept_texts


def test_build_command_writes_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.tiny.build import MODEL_SHAPE, main

    assert main(["--out", str(tmp_path / "m"), "--steps", "2"]) == 0
    info = json.loads((tmp_path / "m" / "build_info.json").read_text())
    assert info["steps"] == 2 and info["shape"] == MODEL_SHAPE
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
    assert len(tok) == model.config.vocab_size == 512
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
