from __future__ import annotations

import pytest

from harness.config.load import load_config
from harness.errors import HarnessError
from harness.session.gate import GateSession
from harness.token_detail import load_tokens, save_tokens, summarize


def test_summary_counts_drops_and_ranks_documents(tmp_path):
    ref = [[-1.0, -1.0, -1.0], [-0.5, -0.5], [-2.0]]
    mod = [[-1.0, -2.5, -1.0], [-0.5, -0.4], [-2.0]]
    save_tokens(tmp_path / "r.npz", ref)
    save_tokens(tmp_path / "m.npz", mod)
    s = summarize(load_tokens(tmp_path / "r.npz"), load_tokens(tmp_path / "m.npz"))
    assert s["tokens"] == 6
    assert s["share_tokens_dropped"] == pytest.approx(1 / 6)
    assert s["worst_documents"] == [{"doc": 0, "tokens": 3, "nll_increase_per_token": pytest.approx(0.5)}]
    save_tokens(tmp_path / "other.npz", [[-1.0], [-1.0]])
    with pytest.raises(HarnessError, match="not describe the same documents"):
        summarize(load_tokens(tmp_path / "r.npz"), load_tokens(tmp_path / "other.npz"))


def test_token_detail_end_to_end(quick_project, tmp_path):
    import shutil

    from harness.report.build import token_logprobs, write_report
    from harness.stages.run import report_of

    project = tmp_path / "project"
    shutil.copytree(quick_project, project)
    cfg = load_config(project / "configs/tiny.yaml")
    writer = GateSession(cfg, quiet=True, update_baselines=True, token_detail=True)
    writer.update_baselines()
    assert writer.store.tokens_path(cfg.name, "ultrachat").exists()
    s = GateSession(cfg, quiet=True, token_detail=True)
    try:
        rep = report_of(s)
        out = write_report(rep, tmp_path / "reports", s.log.lines, token_logprobs(s.scores()))
    finally:
        s.close()
    t = {d["dataset"]: d["token_detail"] for d in rep["datasets"]}
    for name, d in t.items():
        b, q = s.baseline(name), s.score(name)
        assert d["tokens"] == q.tokens
        assert d["mean_delta_nats"] == pytest.approx(b.nll - q.nll, abs=2e-4)  # float32 files vs float64 sums
        assert 0 <= d["share_tokens_dropped"] < 0.05 and d["worst_documents"]
    offsets, lp = load_tokens(out / "tokens-ultrachat.npz")
    assert len(offsets) == s.prepared("ultrachat").stats.kept_texts + 1 and len(lp) == offsets[-1]
    assert "## Per-token detail" in (out / "report.md").read_text()
