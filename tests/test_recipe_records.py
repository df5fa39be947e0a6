"""Recipe regression: a recipe gated now against the stored result of the best recipe, on the same documents."""
from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import yaml

from harness.errors import BaselineError
from harness.recipes.records import check, load_record

pytest_plugins = ["pytester"]

REF = {"d": ([10.0, 10.0, 10.0], [10, 10, 10])}                # BF16: NLL 1.0 a token
BEST = {"format": 1, "recipe": "best", "score": 100 * math.exp(-0.1),
        "datasets": {"d": {"fingerprint": "f1", "doc_nll_sums": [11.0, 11.0, 11.0], "doc_tokens": [10, 10, 10]}}}


def _check(current, margin=0.0, fingerprints=None):
    return check(BEST, current, REF, fingerprints or {"d": "f1"}, margin, samples=200, confidence=0.95, seed=0)


def test_a_recipe_worse_on_every_document_fails_by_the_hand_computed_difference():
    # now NLL 1.2 vs the best's 1.1 on every document: 100 (e^-0.2 - e^-0.1) = -8.6107 on every resample too
    r = _check({"d": ([12.0, 12.0, 12.0], [10, 10, 10])})
    want = 100 * (math.exp(-0.2) - math.exp(-0.1))
    assert r["difference"] == pytest.approx(want, abs=1e-9) and r["low"] == pytest.approx(want, abs=1e-9)
    assert r["high"] == pytest.approx(want, abs=1e-9) and r["word"] == "worse" and not r["passed"]
    assert _check({"d": ([12.0, 12.0, 12.0], [10, 10, 10])}, margin=8.7)["passed"]   # -8.61 is within 8.7 points
    assert not _check({"d": ([12.0, 12.0, 12.0], [10, 10, 10])}, margin=8.6)["passed"]


def test_the_best_recipe_rebuilt_the_same_passes_and_a_mixed_change_is_not_called_worse():
    same = _check({"d": ([11.0, 11.0, 11.0], [10, 10, 10])})
    assert (same["difference"], same["low"], same["high"], same["passed"]) == (0.0, 0.0, 0.0, True)
    # one document better, one worse by the same amount: the point is ~0 and the interval spans it
    mixed = _check({"d": ([10.0, 12.0, 11.0], [10, 10, 10])})
    assert mixed["low"] < 0 < mixed["high"] and mixed["word"] == "indistinguishable" and mixed["passed"]


def test_a_result_stored_on_other_data_is_refused_with_what_to_do():
    with pytest.raises(BaselineError, match=r"other d data \(fingerprint f1; now f2\).*--record-recipe"):
        _check({"d": ([11.0, 11.0, 11.0], [10, 10, 10])}, fingerprints={"d": "f2"})
    with pytest.raises(BaselineError, match=r"other d documents \(token counts differ\)"):
        _check({"d": ([11.0, 11.0, 11.0], [10, 10, 9])})
    with pytest.raises(BaselineError, match="other e data \\(no such dataset"):
        _check({"d": ([11.0] * 3, [10] * 3), "e": ([1.0], [1])}, fingerprints={"d": "f1", "e": "g"})


def test_a_missing_or_unreadable_record_says_the_command_that_stores_it(tmp_path):
    with pytest.raises(BaselineError, match=r"no stored result of recipe 'x' for m .*create it with: HINT"):
        load_record(tmp_path, "m", "x", "HINT")
    (tmp_path / "m/recipes").mkdir(parents=True)
    (tmp_path / "m/recipes/x.json").write_text('{"format": 1, "datasets": {"d": {"doc_nll_sums": [1], "doc_tokens": []}}}')
    with pytest.raises(BaselineError, match="not a recipe record this harness can read.*HINT"):
        load_record(tmp_path, "m", "x", "HINT")


def _project(quick_project, tmp_path, **regression):
    proj = tmp_path / "proj"
    shutil.copytree(quick_project, proj, ignore=shutil.ignore_patterns("reports"))
    cfg_path = proj / "configs/tiny.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["recipe_regression"] = {"best": "nvfp4a16", **regression}
    cfg_path.write_text(yaml.safe_dump(cfg))
    return proj, str(cfg_path)


def test_the_gate_fails_w4a4_against_a_stored_weight_only_best_and_passes_the_best_itself(quick_project, tmp_path,
                                                                                         capsys, monkeypatch):
    """On the quick project, with nvfp4a16 (weight-only) as the stored best: NVFP4 W4A4 quantizes the activations
    as well, so it must come out worse on the same documents; nvfp4a16 rebuilt from the same cache is its own
    record exactly."""
    from harness.cli.main import main

    proj, cfg = _project(quick_project, tmp_path)
    monkeypatch.chdir(proj)
    rc = main(["gate", "--config", cfg, "--recipe", "nvfp4"])
    err = capsys.readouterr().err
    assert rc == 2 and "no stored result of recipe 'nvfp4a16'" in err, err      # refused before quantizing
    assert "--recipe nvfp4a16 --record-recipe" in err and "quantizing" not in err

    assert main(["gate", "--config", cfg, "--recipe", "nvfp4a16", "--record-recipe"]) == 0
    out = capsys.readouterr().out
    rec = json.loads((proj / "baselines/tiny-qwen2/recipes/nvfp4a16.json").read_text())
    assert rec["recipe"] == "nvfp4a16" and rec["scheme"] == "NVFP4A16"
    assert sum(d["tokens"] for d in rec["datasets"].values()) == sum(sum(d["doc_tokens"])
                                                                     for d in rec["datasets"].values())
    assert "ok   recipe nvfp4a16 is not worse than the stored best recipe nvfp4a16" in out
    assert "score difference +0.00 [+0.00, +0.00]" in out and "recipe result stored:" in out

    assert main(["gate", "--config", cfg, "--recipe", "nvfp4"]) == 1
    out = capsys.readouterr().out
    m = re.search(r"FAIL recipe nvfp4 is WORSE than the stored best recipe nvfp4a16 \(score ([\d.]+)\): "
                  r"score difference ([-+][\d.]+) \[([-+][\d.]+), ([-+][\d.]+)\]", out)
    assert m, out
    assert float(m[1]) == pytest.approx(rec["score"], abs=0.005) and float(m[4]) < 0
    report = json.loads(max((proj / "reports").glob("*/report.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert report["recipe_regression"]["best"] == "nvfp4a16" and report["recipe_regression"]["passed"] is False
    assert report["recipe_regression"]["difference"] == pytest.approx(float(m[2]), abs=0.005)


def test_pytest_collects_the_regression_test_per_recipe_and_fails_the_worse_one(pytester, quick_project, tmp_path,
                                                                               monkeypatch, root):
    from harness.cli.main import main

    proj, cfg = _project(quick_project, tmp_path)
    monkeypatch.chdir(proj)
    assert main(["gate", "--config", cfg, "--recipe", "nvfp4a16", "--record-recipe"]) == 0
    monkeypatch.setenv("PYTHONPATH", str(root))
    for d in ("configs", "baselines"):
        shutil.copytree(proj / d, pytester.path / d)
    (pytester.path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    r = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--harness-config", "configs/tiny.yaml",
                                     "-k", "recipe_not_worse", "-rA")
    out = r.stdout.str()
    assert re.search(r"PASSED .*test_recipe_not_worse_than_the_best\[tiny-qwen2/nvfp4a16\]", out), out
    assert re.search(r"FAILED .*test_recipe_not_worse_than_the_best\[tiny-qwen2/nvfp4\]", out), out
    assert "recipe nvfp4 is WORSE than the stored best recipe nvfp4a16" in out
    r.assert_outcomes(passed=1, failed=1, deselected=r.parseoutcomes().get("deselected", 0))


def test_a_recipe_is_named_by_the_sha256_of_its_text():
    from harness.recipes.catalog import recipe_id

    assert recipe_id("") == "e3b0c44298fc"  # sha256 of nothing: e3b0c44298fc1c149afbf4c8996fb924...
    assert recipe_id("quant_stage: {}\n") != recipe_id("quant_stage: {}")
