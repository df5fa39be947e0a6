"""What the package ships (harness/config/bundled.py) and how a user's project meets it: recipes found in the project
first, then among the shipped ones; the shipped tiny baselines read when the project has none, writes to the
project; the default config from a directory that is not this checkout writes its outputs there."""
from __future__ import annotations

import json
import shutil

import pytest

from harness.baselines import BaselineStore
from harness.config.bundled import bundled_dir, is_inside_package
from harness.config.load import load_config
from harness.errors import ConfigError
from harness.recipes.catalog import load_recipe, recipe_names


def test_a_project_without_recipes_uses_the_shipped_ones_and_its_own_win(tmp_path):
    mine = tmp_path / "recipes"
    mine.mkdir()
    assert {"nvfp4", "nvfp4a16", "negative-control-w2"} <= set(recipe_names(mine))
    assert load_recipe(mine, "nvfp4").scheme == "NVFP4"
    text = (bundled_dir("recipes") / "nvfp4.yaml").read_text()
    (mine / "nvfp4.yaml").write_text(text.replace("name: nvfp4", "name: nvfp4\ndefault: false", 1))
    (mine / "w8.yaml").write_text(text.replace("name: nvfp4", "name: w8"))
    assert load_recipe(mine, "nvfp4").default is False  # the project's file, not the shipped one
    assert "w8" in recipe_names(mine) and "nvfp4a16" in recipe_names(mine)
    with pytest.raises(ConfigError, match=r"unknown recipe 'nvfp44' \(did you mean 'nvfp4'\?\)"):
        load_recipe(mine, "nvfp44")


def test_shipped_baselines_are_read_until_the_project_writes_its_own(tmp_path):
    shipped = bundled_dir("baselines")
    store = BaselineStore(tmp_path / "baselines", fallback=shipped)
    b = store.load("tiny-qwen2", "wikitext2")
    assert store.path("tiny-qwen2", "wikitext2") == shipped / "tiny-qwen2/wikitext2.json"
    assert b.ppl == json.loads((shipped / "tiny-qwen2/wikitext2.json").read_text())["ppl"]
    b.provenance = {**b.provenance, "git_commit": "the project's own"}
    written = store.write(b)
    assert written == tmp_path / "baselines/tiny-qwen2/wikitext2.json"
    mine = store.load("tiny-qwen2", "wikitext2").provenance["git_commit"]
    assert mine == "the project's own"  # the project's copy now wins
    shipped_commit = json.loads((shipped / "tiny-qwen2/wikitext2.json").read_text())["provenance"]["git_commit"]
    assert shipped_commit != "the project's own"  # shipped one untouched
    assert not BaselineStore(tmp_path / "other").exists("tiny-qwen2", "wikitext2")  # no fallback, no baseline


def test_the_default_config_run_elsewhere_writes_there_and_reads_the_shipped_baselines(tmp_path, monkeypatch, root):
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert is_inside_package(cfg.source_path) and cfg.root == str(tmp_path)
    assert cfg.path_of("reports_dir") == tmp_path / "reports"
    assert cfg.path_of("baselines_dir") == tmp_path / "baselines"
    assert cfg.fallback_baselines_dir == str(bundled_dir("baselines"))
    # a project with its own tiny config uses it as it is, nothing shipped
    (tmp_path / "configs").mkdir()
    shutil.copy(root / "configs/tiny.yaml", tmp_path / "configs/tiny.yaml")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    own = load_config()
    assert own.source_path == str(tmp_path / "configs/tiny.yaml") and own.fallback_baselines_dir is None
    # this checkout run in its own folder: unchanged
    monkeypatch.chdir(root)
    assert load_config().root == str(root) and load_config().fallback_baselines_dir is None


def test_the_wheel_lists_every_package_of_the_source(root):
    """pyproject.toml names the packages one by one (the shipped defaults are mapped in): a new subpackage that is
    not listed would be missing from installs only."""
    import tomllib

    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "harness").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
    mapped = {k for k in listed if k.startswith("harness._bundled.")}
    assert {f"harness._bundled.{k}" for k in ("configs", "recipes", "baselines")} == mapped
