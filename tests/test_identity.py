"""Baseline identity: a baseline records the model it was scored on and is refused for another one (content,
hub commit, architecture, dtype); unpinned hub revisions are resolved and said so; an existing checkpoint of
another architecture is refused."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from harness.config.load import load_config
from harness.errors import BaselineError, HarnessError
from harness.session.gate import GateSession
from harness.models.identity import mismatches, resolve_hub_revision
from harness.config.locate import Location


def _project_with_model(project):
    """The tiny config in a project copy, pointing at a copy of the tiny model."""
    from harness.tiny import MODEL_DIR

    shutil.copytree(MODEL_DIR, project / "model")
    p = project / "configs/tiny.yaml"
    cfg = yaml.safe_load(p.read_text())
    cfg["model"]["path"] = "./model"
    p.write_text(yaml.safe_dump(cfg))
    return load_config(p)


def test_a_baseline_is_refused_for_another_model_and_says_how_to_rebuild(project):
    cfg = _project_with_model(project)
    w = GateSession(cfg, quiet=True, update_baselines=True)
    w.update_baselines()
    w.close()
    ident = json.loads((project / "baselines/tiny-qwen2/wikitext2.json").read_text())["provenance"]["model_identity"]
    assert ident["kind"] == "local" and ident["path"] == "./model" and len(ident["content_sha256"]) == 64
    assert ident["architecture"] == {"model_type": "qwen2", "vocab_size": 512, "hidden_size": 128,
                                     "num_hidden_layers": 2}
    GateSession(load_config(project / "configs/tiny.yaml"), quiet=True).baseline("wikitext2")  # same model: fine

    cfg_path = project / "configs/tiny.yaml"
    config = json.loads((project / "model/config.json").read_text())
    (project / "model/config.json").write_text(json.dumps({**config, "initializer_range": 0.03}))  # other content
    s = GateSession(load_config(cfg_path), quiet=True)
    with pytest.raises(BaselineError, match=r"(?s)scored on another model than this config's \(model content "
                                            r"\w{12} \(\./model\) vs \w{12} \(\./model\)\).*rebuild it with: pytest "
                                            r"--harness-config .*--update-baselines"):
        s.baseline("wikitext2")


def test_another_dtype_is_refused(project):
    cfg = load_config(project / "configs/tiny.yaml", {"model.engine.bf16.hf.dtype": "float16"})
    with pytest.raises(BaselineError, match=r"dtype bfloat16 vs float16"):
        GateSession(cfg, quiet=True).baseline("ultrachat")


def test_mismatches_compare_what_both_sides_know():
    a = {"kind": "hub", "id": "org/m", "resolved": "a" * 40, "architecture": {"model_type": "qwen2", "vocab_size": 10}}
    assert mismatches(a, dict(a)) == []
    assert mismatches(a, {**a, "resolved": "b" * 40}) == [f"commit {'a' * 12} vs {'b' * 12} of org/m"]
    assert mismatches(a, {**a, "resolved": None}) == []  # unresolved now: nothing to compare the commit with
    assert mismatches(a, {**a, "id": "org/other"}) == ["hub id org/m vs org/other"]
    assert mismatches(a, {**a, "architecture": {"vocab_size": 12}}) == ["architecture vocab_size 10 vs 12"]
    assert mismatches(None, a) == []


def test_unpinned_hub_revisions_resolve_through_the_hub_cache_and_say_so(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    refs = tmp_path / "models--Qwen--Qwen2.5-7B-Instruct" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("c" * 40 + "\n")
    assert resolve_hub_revision("Qwen/Qwen2.5-7B-Instruct", None) == ("c" * 40, "hub cache")
    assert resolve_hub_revision("Qwen/Qwen2.5-7B-Instruct", "d" * 40) == ("d" * 40, "pinned")
    sha, how = resolve_hub_revision("Qwen/Qwen2.5-7B-Instruct", "v2")
    assert sha is None and how.startswith("unresolved (offline")

    from harness.models import identity

    ident = identity.model_identity(Location("hub", "Qwen/Qwen2.5-7B-Instruct"), None)
    assert identity.key(ident) == {"hub_id": "Qwen/Qwen2.5-7B-Instruct", "revision": "c" * 40}  # not "main"
    unresolved = identity.model_identity(Location("hub", "Qwen/Qwen2.5-7B-Instruct"), "v2")
    assert identity.key(unresolved)["revision"] == "unresolved:v2"


def test_the_gate_says_an_unpinned_revision_out_loud(root, monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    cfg = load_config(root / "configs/tiny.yaml", {"model.path": "Qwen/Qwen2.5-7B-Instruct",
                                                   "model.tokenizer": "builtin:tiny"})
    lines = []
    GateSession(cfg, log=lines.append).ctx.identity
    assert any("model.revision is not pinned: Qwen/Qwen2.5-7B-Instruct@main is unresolved" in ln and
               "pin model.revision" in ln for ln in lines)


def test_an_existing_checkpoint_of_another_architecture_is_refused(root, tmp_path):
    from harness.models.synth import SynthSpec
    from harness.models.synth_write import write_checkpoint

    shape = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
             "tie_word_embeddings": False, "max_position_embeddings": 512}
    write_checkpoint(SynthSpec(config=shape), tmp_path / "other", device="cpu", progress=False)  # hidden 64 vs 128
    cfg = load_config(root / "configs/tiny.yaml", {"model.checkpoint": str(tmp_path / "other")})
    with pytest.raises(HarnessError, match=r"model.checkpoint .*other is not a quantization of model.path builtin:tiny: "
                                           r"architecture hidden_size 128 vs 64"):
        GateSession(cfg, quiet=True).checkpoint()
