"""`harness compare` (harness/recipes/compare.py): the paired difference of two recipes on the same documents, by hand, and
the command on the quick project."""
from __future__ import annotations

import json
import math
import re

import pytest

from harness.recipes.compare import pair_difference


def test_a_uniform_gap_is_a_point_and_says_better_or_worse():
    """Every document: BF16 1.0 nat a token, A 1.1, B 1.2 (10 tokens each). Scores by hand: A 100 e^-0.1 = 90.484,
    B 100 e^-0.2 = 81.873; every resample has the same per-token means, so the interval is the point."""
    ref = {"d": ([10.0, 10.0], [10, 10])}
    a = {"d": ([11.0, 11.0], [10, 10])}
    b = {"d": ([12.0, 12.0], [10, 10])}
    d = pair_difference(ref, a, b, samples=200)
    want = 100 * (math.exp(-0.1) - math.exp(-0.2))  # 8.6106
    assert d["difference"] == pytest.approx(want, abs=1e-9)
    assert d["low"] == pytest.approx(want, abs=1e-9) and d["high"] == pytest.approx(want, abs=1e-9)
    assert d["word"] == "better"
    assert pair_difference(ref, b, a, samples=200)["word"] == "worse"


def test_a_gap_that_flips_between_documents_is_indistinguishable():
    """Doc 1: A 1.05, B 1.15 nats a token; doc 2 the other way round. Same totals: difference 0. A resample of doc 1
    twice has A ahead by 100 (e^-0.05 - e^-0.15) = 8.18, of doc 2 twice behind by as much: the interval holds 0."""
    ref = {"d": ([10.0, 10.0], [10, 10])}
    a = {"d": ([10.5, 11.5], [10, 10])}
    b = {"d": ([11.5, 10.5], [10, 10])}
    d = pair_difference(ref, a, b, samples=400, seed=1)
    assert d["difference"] == pytest.approx(0.0, abs=1e-9)
    spread = 100 * (math.exp(-0.05) - math.exp(-0.15))
    assert d["low"] == pytest.approx(-spread, abs=1e-6) and d["high"] == pytest.approx(spread, abs=1e-6)
    assert d["word"] == "indistinguishable"


def test_documents_that_do_not_pair_are_refused():
    with pytest.raises(ValueError, match="cannot pair"):
        pair_difference({"d": ([1.0, 1.0], [1, 1])}, {"d": ([1.0], [1])}, {"d": ([1.0, 1.0], [1, 1])})


def test_compare_gates_each_recipe_and_the_pair_agrees_with_their_scores(quick_project, tmp_path, capsys, monkeypatch):
    """Two recipes and one llm-compressor refuses: the two are gated and paired, the third is a row with its error,
    the report is written, and the exit says that not every recipe ran."""
    import shutil

    import yaml

    from harness.cli.main import main

    proj = tmp_path / "proj"
    shutil.copytree(quick_project, proj, ignore=shutil.ignore_patterns("reports"))
    broken = yaml.safe_load((proj / "recipes/nvfp4.yaml").read_text())
    broken.update(name="broken", default=False, recipe="quant_stage:\n  quant_modifiers:\n    NoSuchModifier: {}\n")
    (proj / "recipes/broken.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.chdir(proj)
    rc = main(["compare", "--recipes", "nvfp4", "broken", "nvfp4a16", "--report-dir", str(tmp_path / "r")])
    cap = capsys.readouterr()
    out = cap.out
    assert rc == 2, out + cap.err
    assert "recipes that could not be gated: broken" in cap.err
    folder = next((tmp_path / "r").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["chart.svg", "compare.json", "compare.md"]
    rep = json.loads((folder / "compare.json").read_text())
    a, bad, b = rep["recipes"]
    assert [a["recipe"], bad["recipe"], b["recipe"]] == ["nvfp4", "broken", "nvfp4a16"]
    assert "quantization failed" in bad["error"] and re.search(r"^\| broken .*ERROR: quantization failed", out, re.M)
    assert a["kernel"] == "hf-fake-quant W4A4" and b["kernel"] == "hf-fake-quant weight-only"
    (p,) = rep["pairs"]  # the two that ran
    assert (p["a"], p["b"]) == ("nvfp4", "nvfp4a16")
    assert p["difference"] == pytest.approx(a["score"] - b["score"], abs=1e-9)  # the same documents, both gated
    assert p["low"] <= p["difference"] <= p["high"]
    assert re.search(r"^\| nvfp4\s+\| nvfp4a16\s+\| [-+]\d+\.\d\d \[", out, re.M), out  # the pair, printed


def test_one_recipe_is_not_a_comparison(capsys):
    from harness.cli.main import main

    assert main(["compare", "--recipes", "nvfp4"]) == 2
    assert "compare needs two recipes or more" in capsys.readouterr().err


def test_a_recipe_refused_before_it_starts_is_a_row_and_the_others_still_run():
    """The preflight refuses a recipe (here: a scheme the backend cannot run) before any quantization: that recipe is
    a row with the refusal, the comparison goes on with the rest."""
    from harness.recipes.compare import run
    from harness.errors import ConfigError

    def make(name):
        if name == "refused":
            raise ConfigError("recipe refused: scheme W2A16 cannot run on vllm")
        raise ConfigError(f"{name}: stopped here")  # the rows of errors are what this test is about

    rep = run(make, ["refused", "later"], log=lambda m: None)
    assert rep["recipes"] == [{"recipe": "refused", "error": "recipe refused: scheme W2A16 cannot run on vllm"},
                              {"recipe": "later", "error": "later: stopped here"}]
    assert rep["pairs"] == []


def _two_recipes_half_a_point_apart(with_failure: bool = False) -> dict:
    """The tiny default's NVFP4 (99.14 [98.94, 99.33]) and a recipe 0.51 above it, thresholds 99.0, as the compare
    report holds them; with_failure: a third recipe that llm-compressor refused."""
    rows = [{"recipe": "nvfp4", "score": 99.14, "low": 98.94, "high": 99.33, "threshold": 99.0, "passed": True},
            {"recipe": "nvfp4a16", "score": 99.65, "low": 99.52, "high": 99.77, "threshold": 99.0, "passed": True}]
    if with_failure:
        rows.append({"recipe": "keep-v", "error": "quantization failed (exit 2): AssertionError: Some layers in fused "
                                                  "group: ('q_proj', 'k_proj', 'v_proj') have no weight observer"})
    return {"model": "tiny-qwen2", "recipes": rows,
            "pairs": [{"a": "nvfp4", "b": "nvfp4a16", "difference": -0.51, "low": -0.62, "high": -0.40,
                       "confidence": 0.95, "word": "worse"}]}


def test_the_compare_chart_zooms_to_a_half_point_gap_and_labels_both(tmp_path):
    """Issue 41: every recipe was drawn from 0 to 100, so 99.14 against 99.65 looked the same. Now the axis spans the
    data (under 10 points here), each bar has its value, and a second panel holds the paired difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.recipes.compare import deltas_to_reference, write_chart

    rep = _two_recipes_half_a_point_apart(with_failure=True)
    ref, deltas = deltas_to_reference(rep)
    assert ref == "nvfp4" and deltas == [{"recipe": "nvfp4a16", "delta": 0.51, "low": 0.40, "high": 0.62}]
    seen = {}
    real_save = plt.Figure.savefig

    def keep(fig, *a, **kw):  # the axes as drawn, before the file is written
        seen["ylim"] = fig.axes[0].get_ylim()
        seen["texts"] = [t.get_text() for ax in fig.axes for t in ax.texts]
        return real_save(fig, *a, **kw)

    plt.Figure.savefig = keep
    try:
        write_chart(rep, tmp_path / "chart.svg")
    finally:
        plt.Figure.savefig = real_save
    lo, hi = seen["ylim"]
    assert hi - lo < 10 and lo < 98.94 and hi > 100.0, seen["ylim"]  # every interval, threshold and BF16 inside
    assert "99.14" in seen["texts"] and "99.65" in seen["texts"], seen["texts"]
    assert "+0.51 [+0.40, +0.62]" in seen["texts"]
    assert any(t.startswith("not gated:\nquantization failed") for t in seen["texts"]), seen["texts"]  # a labelled gap


def test_a_recipe_that_could_not_be_gated_keeps_its_whole_cause_in_the_table():
    from harness.recipes.compare import tables

    rep = _two_recipes_half_a_point_apart(with_failure=True)
    for r in rep["recipes"][:2]:
        r.update(ppl=2.87, kld_mean=0.008, kld_p99=0.13, top1_pct=95.1, bytes=2**20, kernel="k", time={"wall_s": 10})
    one, _ = tables(rep)
    assert "have no weight observer" in one  # never cut mid-sentence
