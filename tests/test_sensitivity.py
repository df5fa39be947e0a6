"""`harness sensitivity` (harness/sensitivity.py): units, ignore patterns, and a case with a known answer: one Linear
of the tiny model planted with outlier weights must rank first, and leaving it in BF16 must be the suggestion."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from harness import sensitivity as S

PLANTED = "model.layers.1.mlp.up_proj"  # ranked last of 14 Linears on the unplanted tiny model


def test_units_group_the_linears_by_layer_type_or_one_each():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj",
             "model.layers.1.mlp.down_proj"]
    params = dict(zip(names, [10, 20, 30, 40]))
    by_layer = S.make_units(names, params, "layer")
    assert [(u.name, u.index, u.params) for u in by_layer] == [("layer 0", 0, 30), ("layer 1", 1, 70)]
    by_type = S.make_units(names, params, "type")
    assert [(u.name, u.linears, u.params) for u in by_type] == [
        ("q_proj", [names[0], names[2]], 40), ("down_proj", [names[1], names[3]], 60)]
    assert [u.name for u in S.make_units(names, params, "linear")] == names
    assert S.ignore_patterns([by_layer[1], by_type[1]]) == [r"re:^model\.layers\.1\.", r"re:.*\.down_proj$"]
    with pytest.raises(ValueError, match="unknown unit 'block'"):
        S.make_units(names, params, "block")


def _planted_model(root, tmp_path):
    """The tiny model with one outlier per block of 16 in PLANTED's weight, 40x its row's largest value: NVFP4 scales
    each block to its outlier, so the block's other 15 weights (at most 1/40 of it, under the smallest FP4 step of
    1/12 of it) all quantize to zero; every other Linear is untouched."""
    import torch
    from safetensors.torch import load_file, save_file

    src = root / "harness/tiny/model"
    dst = tmp_path / "planted"
    shutil.copytree(src, dst)
    t = load_file(str(dst / "model.safetensors"))
    w = t[PLANTED + ".weight"].float()
    blocks = w.view(w.shape[0], -1, 16)
    blocks[:, :, 0] = 40 * w.abs().amax(dim=1, keepdim=True)
    t[PLANTED + ".weight"] = blocks.view_as(w).to(torch.bfloat16)
    save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def planted_probe(root, tmp_path_factory):
    from harness.config import load_config
    from harness.gate import GateSession
    from harness.sensitivity_report import docs_of

    cfg = load_config(overrides={"model.path": str(_planted_model(root, tmp_path_factory.mktemp("p")))})
    s = GateSession(cfg, backend="hf", quiet=True)
    s.start_engine("bf16")
    probe = S.Probe(s.engines.current, docs_of(s, 3, 96), top_k=20, log=lambda m: None)
    yield probe
    s.close()


def test_the_planted_linear_ranks_first_and_is_the_suggestion(planted_probe):
    sens = S.run(planted_probe, by="linear", mode="only")
    ranked = sens.ranked()
    assert ranked[0][0].name == PLANTED, [(u.name, round(m.kld_mean, 4)) for u, m in ranked[:3]]
    # alone, it wrecks the model (15 of 16 weights gone); every other Linear alone costs little: not a close call
    assert ranked[0][1].score < 50 and all(m.score > 90 for _, m in ranked[1:]), [m.score for _, m in ranked]
    assert sens.all_quantized.score < 50
    s = S.suggest(planted_probe, sens, target=99.0)
    assert s["reached"] and s["units"] == [PLANTED] and s["ignore"] == [PLANTED], s
    assert s["extra_bytes"] == round(128 * 384 * (2 - 4.5 / 8))  # up_proj: 384 x 128 weights, BF16 minus NVFP4


def test_all_but_mode_and_units_by_layer_find_it_too(planted_probe):
    layer = S.run(planted_probe, by="layer", mode="only").ranked()
    assert layer[0][0].name == "layer 1"
    rest = S.run(planted_probe, by="type", mode="all-but").ranked()
    assert rest[0][0].name == "up_proj"  # leaving up_proj in BF16 leaves the least KL behind
    assert rest[0][1].quantized == 14 - 2  # every Linear but the two up_projs


def test_the_command_writes_the_ranking_the_chart_and_the_suggestion(root, tmp_path, capsys):
    from harness.cli import main

    model = _planted_model(root, tmp_path)
    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True)
    (proj / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    rc = main(["sensitivity", "--set", f"model.path={model}", "--set", f"recipes_dir={proj / 'recipes'}",
               "--by", "type", "--texts", "2", "--max-tokens", "64", "--report-dir", str(tmp_path / "r"),
               "--write-recipe", "keep-up"])
    out = capsys.readouterr().out
    assert rc == 0, out
    folder = next((tmp_path / "r").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["chart.svg", "sensitivity.json", "sensitivity.md"]
    rep = json.loads((folder / "sensitivity.json").read_text())
    assert rep["ranking"][0]["unit"] == "up_proj" and rep["suggestion"]["units"] == ["up_proj"]
    assert rep["depth_order"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert 'ignore: ["lm_head", "re:.*\\\\.up_proj$"]' in (folder / "sensitivity.md").read_text()
    assert re.search(r"^\|\s+1 \| up_proj\s+\|", out, re.M), out  # rank 1 printed first
    # the suggestion as a recipe: the shipped nvfp4 recipe with the planted projection added to its ignore list
    import yaml

    from harness.recipes import load_recipe

    r = load_recipe(proj / "recipes", "keep-up")
    mod = yaml.safe_load(r.recipe_text)["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    assert mod["ignore"] == ["lm_head", "re:.*\\.up_proj$"] and mod["scheme"] == "NVFP4" and r.scheme == "NVFP4"
    assert r.default is False and "--recipe keep-up" in out
    assert main(["sensitivity", "--set", f"model.path={model}", "--set", f"recipes_dir={proj / 'recipes'}",
                 "--write-recipe", "keep-up"]) == 2
    assert "keep-up.yaml exists" in capsys.readouterr().err


def test_bad_counts_are_refused(capsys):
    from harness.cli import main

    assert main(["sensitivity", "--texts", "0"]) == 2
    assert "--texts must be at least 1" in capsys.readouterr().err
