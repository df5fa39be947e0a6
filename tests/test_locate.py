"""One rule for 'local path or hub id' (harness.config.locate), used by the config, the data loader and the model checks."""
from __future__ import annotations

from harness.config.locate import locate


def test_hub_ids_local_paths_and_builtins(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "gpt2-local").mkdir()
    assert (locate("gpt2", tmp_path).kind, locate("gpt2", tmp_path).path) == ("hub", "gpt2")  # no such dir
    assert locate("Qwen/Qwen2.5-72B-Instruct", tmp_path).kind == "hub"
    assert locate("models/mine", tmp_path).path == str(tmp_path / "models/mine")  # exists under the root
    assert locate("gpt2-local", tmp_path).kind == "local"
    assert locate("./models/new", tmp_path).path == str(tmp_path / "models/new")  # ./: local even if absent
    assert locate("a/b/c", tmp_path).kind == "local"                    # not a hub id's shape
    assert locate("data/test.parquet", tmp_path).kind == "local"        # a file name
    assert locate("/abs/dir", tmp_path).path == "/abs/dir"
    monkeypatch.setenv("SYNTH", str(tmp_path / "s"))
    assert locate("${SYNTH}/bf16", tmp_path).path == str(tmp_path / "s/bf16")
    assert locate("builtin:tiny", tmp_path).path.endswith("harness/tiny/model")


def test_config_resolve_uses_the_rule(root):
    from harness.config.load import load_config

    cfg = load_config(root / "configs/tiny.yaml")
    assert cfg.resolve("gpt2") == "gpt2" and cfg.resolve("parquet") == "parquet"  # hub id / datasets builder name
    assert cfg.resolve("configs/tiny.yaml") == str(root / "configs/tiny.yaml")
