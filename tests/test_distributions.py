"""BF16 next-token distributions stored beside the baselines, and the gate that compares with them (tiny model, CPU):
file round trip and its checks, the update and gate flow, refusals before any work, limits and their sources, the
negative control failing on them, vLLM's prompt_logprobs layout."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml

from harness.config.load import load_config
from harness.distributions import SUFFIX, TopK, load, save
from harness.errors import BaselineError, BackendError, ConfigError
from harness.session.gate import GateSession


def small_topk(k=3, tokens=5, vocab=70000) -> TopK:
    rng = np.random.default_rng(0)
    return TopK(offsets=np.array([0, 2, tokens]), ids=rng.integers(0, vocab, size=(tokens, k)),
                logprobs=-rng.random((tokens, k)).astype(np.float32), true_ids=rng.integers(0, vocab, tokens),
                true_logprobs=-rng.random(tokens).astype(np.float32))


def test_a_stored_file_reads_back_and_its_record_is_checked(tmp_path):
    t = small_topk()
    meta = save(tmp_path / "d.topk.npz", t)
    assert meta["file"] == "d.topk.npz" and (meta["top_k"], meta["tokens"], meta["documents"]) == (3, 5, 2)
    got = load(tmp_path / "d.topk.npz", meta, "UPDATE")
    for f in ("offsets", "ids", "logprobs", "true_ids", "true_logprobs"):
        assert np.array_equal(getattr(got, f), getattr(t, f)), f  # ids above 65535 kept (int32)
    assert [p.name for p in tmp_path.iterdir()] == ["d.topk.npz"]
    with pytest.raises(BaselineError, match="sha256.*UPDATE"):
        load(tmp_path / "d.topk.npz", {**meta, "sha256": "0" * 64}, "UPDATE")
    with pytest.raises(BaselineError, match="missing.*UPDATE"):
        load(tmp_path / "gone.topk.npz", meta, "UPDATE")


def test_small_vocabularies_store_ids_in_two_bytes(tmp_path):
    small, big = small_topk(k=20, tokens=400, vocab=512), small_topk(k=20, tokens=400, vocab=2**20)
    assert save(tmp_path / "s.npz", small)["bytes"] < save(tmp_path / "b.npz", big)["bytes"]
    assert np.array_equal(load(tmp_path / "s.npz", save(tmp_path / "s.npz", small), "").ids, small.ids)


def test_results_without_distributions_are_refused():
    from harness.backends.base import DocResult
    from harness.distributions import from_results

    with pytest.raises(BackendError, match="without its top-2"):
        from_results([DocResult(-1.0, 2, [-0.5, -0.5])], [[1, 2, 3]], 2, "x")
    with pytest.raises(BackendError, match="shape"):
        from_results([DocResult(-1.0, 2, [-0.5, -0.5], np.zeros((1, 2)), np.zeros((1, 2)))], [[1, 2, 3]], 2, "x")
    with pytest.raises(BackendError, match="non-finite"):
        from_results([DocResult(-1.0, 2, [-0.5, np.nan], np.zeros((2, 2)), np.zeros((2, 2)))], [[1, 2, 3]], 2, "x")


class FlatLogprobs:
    """vLLM's flat prompt logprobs (vllm/logprobs.py): position 0 empty, then per position the prompt token first
    (at its vocabulary rank), then the top k, best first."""

    def __init__(self, rows):
        self.start_indices, self.end_indices, self.token_ids, self.logprobs = [0], [0], [], []
        for row in rows:
            self.start_indices.append(len(self.token_ids))
            for tid, lp in row:
                self.token_ids.append(tid)
                self.logprobs.append(lp)
            self.end_indices.append(len(self.token_ids))


def test_vllm_prompt_logprobs_with_top_k_become_distributions():
    from harness.backends.vllm_outputs import doc_result

    ids = [5, 7, 9]
    flat = FlatLogprobs([[(7, -0.5), (7, -0.5), (3, -1.5)],    # the prompt token is also the top-1
                         [(9, -3.0), (4, -0.2), (7, -2.0)]])   # not in the top 2: it comes first anyway
    r = doc_result(flat, ids, top_k=2)
    assert (r.n_tokens, r.logprob_sum, r.token_logprobs) == (2, -3.5, [-0.5, -3.0])
    assert r.top_ids.tolist() == [[7, 3], [4, 7]]
    assert r.top_logprobs.tolist() == [pytest.approx([-0.5, -1.5]), pytest.approx([-0.2, -2.0])]
    with pytest.raises(BackendError, match="expected 3 prompt logprobs"):
        doc_result(FlatLogprobs([[(7, -0.5), (7, -0.5)], [(9, -3.0), (4, -0.2), (7, -2.0)]]), ids, top_k=2)
    with pytest.raises(BackendError, match="not the prompt token"):
        doc_result(FlatLogprobs([[(8, -0.5), (7, -0.5), (3, -1.5)], [(9, -3.0), (4, -0.2), (7, -2.0)]]), ids, top_k=2)


def test_limits_need_distributions_and_recipes_may_set_them(tmp_path, root):
    cfg = yaml.safe_load((root / "configs/tiny.yaml").read_text())
    del cfg["distributions"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="kld_mean_max needs the next-token distributions"):
        load_config(tmp_path / "c.yaml")
    from harness.stages.judge import limit_source

    c = load_config(root / "configs/tiny.yaml")
    assert limit_source("top1_min", c.thresholds, {"top1_min": 80.0}, "r") == (94.0, "config")
    c.thresholds.top1_min = None
    assert limit_source("top1_min", c.thresholds, {"top1_min": 80.0}, "r") == (80.0, "recipe r")
    assert limit_source("top1_min", c.thresholds, {}, "r") == (None, "none")


def test_use_lower_gates_on_the_pessimistic_end_of_each_interval():
    from harness.stages.judge import judge_limit

    stats = {"kld": {"mean": 0.010, "interval": {"low": 0.008, "high": 0.013}},
             "top1_pct": 95.0, "top1_interval": {"low": 93.5, "high": 96.0}}
    assert judge_limit("d", stats, "kld_mean_max", 0.012, "config", "point").passed
    o = judge_limit("d", stats, "kld_mean_max", 0.012, "config", "lower")
    assert (o.passed, o.value) == (False, 0.013) and "FAIL d: KL mean upper bound 0.0130 nats > max 0.0120" in o.message()
    assert judge_limit("d", stats, "top1_min", 94.0, "config", "point").passed
    o = judge_limit("d", stats, "top1_min", 94.0, "config", "lower")
    assert (o.passed, o.value) == (False, 93.5) and "top-1 agreement lower bound 93.50% < min 94.00%" in o.message()


@pytest.fixture(scope="module")
def dist_project(quick_project, tmp_path_factory):
    """The quick project (40 texts per dataset, distributions on, BF16 top-20 stored by its baseline update)."""
    from tests.conftest import copy_project

    return copy_project(quick_project, tmp_path_factory.mktemp("dist"))


def test_the_update_stores_bf16_top_k_beside_each_baseline_and_records_it(dist_project):
    for name in ("wikitext2", "ultrachat"):
        b = json.loads((dist_project / "baselines/tiny-qwen2" / f"{name}.json").read_text())
        d = b["distributions"]
        assert d["file"] == f"{name}{SUFFIX}" and d["top_k"] == 20 and d["tokens"] == b["tokens"]
        t = load(dist_project / "baselines/tiny-qwen2" / d["file"], d, "")
        assert t.documents == b["kept_texts"] and (t.doc_tokens() == np.asarray(b["doc_tokens"])).all()
        # the stored true-token log-probabilities are the baseline's: per-document sums = -NLL sums
        sums = np.add.reduceat(t.true_logprobs.astype(np.float64), t.offsets[:-1])
        assert np.allclose(-sums, b["doc_nll_sums"], atol=1e-3)


def test_the_gate_compares_distributions_and_w2_fails_on_them(dist_project):
    cfg = load_config(dist_project / "configs/tiny.yaml")
    good = GateSession(cfg, quiet=True)
    bad = GateSession(cfg, quiet=True, recipe="negative-control-w2")
    try:
        for s in (good, bad):
            for n in s.dataset_names:
                s.score(n)
        g, w = good.judgement(None).distributions, bad.judgement(None).distributions
        assert 0 < g["kld"]["mean"] < 0.012 and g["top1_pct"] > 94
        assert w["kld"]["mean"] > 0.5 and w["top1_pct"] < 60  # 2-bit weights: the distributions are wrecked
        assert all(o.passed for n in [*good.dataset_names, None] for o in good.judgement(n).limits)
        failed = [o for n in [*bad.dataset_names, None] for o in bad.judgement(n).limits if not o.passed]
        assert {(o.name, o.key) for o in failed} == {(n, k) for n in ["wikitext2", "ultrachat", "overall"]
                                                      for k in ("kld_mean_max", "top1_min")}
        assert not bad.verdict().passed and "FAIL overall: KL mean" in bad.verdict().summary()
    finally:
        good.close()
        bad.close()


def _break(project, tmp_path, edit):
    root = tmp_path / "p"
    shutil.copytree(project, root)
    edit(root)
    return GateSession(load_config(root / "configs/tiny.yaml"), quiet=True)


@pytest.mark.parametrize("fault, message", [
    ("no_record", "stores none .made without them.; add them with: "),
    ("other_k", "stores BF16's top-20, the config asks for top-10"),
    ("file_gone", "is missing; re-create it with: "),
])
def test_missing_or_mismatched_distributions_are_refused_before_any_work(dist_project, tmp_path, fault, message):
    def edit(root):
        base = root / "baselines/tiny-qwen2/ultrachat.json"
        if fault == "no_record":
            b = json.loads(base.read_text())
            b["distributions"] = None
            base.write_text(json.dumps(b))
        elif fault == "other_k":
            c = yaml.safe_load((root / "configs/tiny.yaml").read_text())
            c["distributions"]["top_k"] = 10
            (root / "configs/tiny.yaml").write_text(yaml.safe_dump(c))
        else:
            (root / "baselines/tiny-qwen2/ultrachat.topk.npz").unlink()

    s = _break(dist_project, tmp_path, edit)
    try:
        with pytest.raises(BaselineError, match=message):
            s.preflight()
        assert s.engines.opened == []  # refused before any quantization or engine start
    finally:
        s.close()


def test_a_replaced_distributions_file_is_refused_before_scoring(dist_project, tmp_path):
    def edit(root):
        d = root / "baselines/tiny-qwen2"
        shutil.copy(d / "wikitext2.topk.npz", d / "ultrachat.topk.npz")  # a file of the right name, other content
        b = json.loads((d / "ultrachat.json").read_text())  # ... even one of the recorded size
        b["distributions"]["bytes"] = (d / "ultrachat.topk.npz").stat().st_size
        (d / "ultrachat.json").write_text(json.dumps(b))

    s = _break(dist_project, tmp_path, edit)
    try:
        with pytest.raises(BaselineError, match=r"sha256 \w+\.\.\. differs from the \w+\.\.\. its baseline recorded"):
            s.score("ultrachat")  # checked with the baseline, before any quantization or engine start
        assert s.engines.opened == []
    finally:
        s.close()


def test_harness_score_reports_ppl_without_computing_distributions(dist_project, capsys, monkeypatch):
    """`harness score` prints PPL only, so it asks the backend for no top-k (which would cost up to half the speed)."""
    from harness.backends.hf import HFBackend
    from harness.cli.main import main

    asked = []
    real = HFBackend.loglikelihood_rolling

    def spy(self, docs, progress=None, token_logprobs=False, top_k=0):
        asked.append(top_k)
        return real(self, docs, progress, token_logprobs, top_k)

    monkeypatch.setattr(HFBackend, "loglikelihood_rolling", spy)
    rc = main(["score", "--config", str(dist_project / "configs/tiny.yaml"), "--precision", "bf16", "--dataset",
               "wikitext2"])
    assert rc == 0 and asked == [0], asked
    assert re.search(r"^\| wikitext2 \| bf16\s+\|", capsys.readouterr().out, re.M)
