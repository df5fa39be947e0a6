"""The reference study (Qwen2.5-72B-Instruct): its stored BF16 baselines and NVFP4 reference result."""
from __future__ import annotations

import re

import pytest

from harness.baselines import BaselineStore
from harness.config.load import load_config
from harness.errors import BaselineError
from harness.report.build import reference_report
from harness.report.markdown import overall_table

# published to 6 decimals: an overall value recomputed from them can differ by one unit in the 6th decimal
ROUNDING = 1.5e-6


def test_reference_overall_table_is_reproduced_through_the_report_code(root):
    rep = reference_report(root / "baselines/qwen2.5-72b-instruct")
    o = rep["overall"]
    assert o["bf16"]["tokens"] == o["nvfp4"]["tokens"] == 252245
    assert o["bf16"]["ppl"] == pytest.approx(1.408351, abs=ROUNDING)
    assert o["bf16"]["nll"] == pytest.approx(0.342419, abs=ROUNDING)
    assert o["nvfp4"]["ppl"] == pytest.approx(1.418097, abs=ROUNDING)
    assert o["nvfp4"]["nll"] == pytest.approx(0.349316, abs=ROUNDING)
    assert f"{o['score']:.2f}" == "99.31"
    table = overall_table(rep)
    assert re.search(r"^\| NVFP4\s+\|.*\|\s+252245 \|\s+99\.31 \|", table, re.M), table
    per = {d["dataset"]: d for d in rep["datasets"]}
    assert (per["wikitext2"]["bf16"]["kept_texts"], per["ultrachat"]["bf16"]["kept_texts"]) == (132, 200)


def test_reference_baselines_load_with_provenance_and_the_reference_result_is_not_a_baseline(root):
    store = BaselineStore(root / "baselines")
    b = store.load("qwen2.5-72b-instruct", "wikitext2")
    assert (b.ppl, b.nll, b.tokens, b.kept_texts) == (1.717892, 0.541098, 23922, 132)
    assert b.provenance["versions"]["vllm"] == "0.13.0" and "Blackwell" in b.provenance["device"]
    assert b.provenance["date"] == "2025-12-26" and b.provenance["max_model_len"] == 2048
    assert not b.has_documents
    with pytest.raises(BaselineError, match="reference-result.*not a baseline"):
        BaselineStore(root / "baselines" / "qwen2.5-72b-instruct").load("reference", "nvfp4-wikitext2")


def test_72b_config_matches_the_reference_settings(root):
    cfg = load_config(root / "configs/qwen2.5-72b-instruct.yaml")
    assert cfg.model.max_model_len == 2048 and cfg.backend == "vllm"
    assert {n: d.n_texts for n, d in cfg.datasets.items()} == {"wikitext2": 200, "ultrachat": 200}
    # the engine is set for one H200 (the reference ran 220 GB of UVA offload, one sequence at a time, which the
    # pinned vLLM ignores on its default runner): every 4th layer prefetched from CPU memory, big batches
    bf16 = cfg.engine_kwargs("bf16", "vllm")
    assert (bf16["offload_backend"], bf16["offload_group_size"], bf16["offload_num_in_group"],
            bf16["max_num_batched_tokens"]) == ("prefetch", 4, 1, 16384)
    shape = load_config(root / "configs/qwen2.5-72b-shape.yaml")  # the timed stand-in runs the same engines
    assert shape.model.engine == {p: {"vllm": e["vllm"]} for p, e in cfg.model.engine.items()}
    tp = load_config(root / "configs/qwen2.5-72b-instruct-tp.yaml")
    # two H200s: BF16 (145 GB) over both with the smallest TP that holds it, NVFP4 (44.5 GB) one engine per GPU
    assert tp.name == cfg.name and tp.engine_kwargs("bf16", "vllm")["tensor_parallel_size"] == 2
    assert "offload_backend" not in tp.engine_kwargs("bf16", "vllm")
    assert tp.engine_kwargs("nvfp4", "vllm")["data_parallel_size"] == 2


def test_tables_name_the_quantized_side_by_its_scheme(root):
    """A weight-only or negative-control run is not labelled NVFP4: the label is the checkpoint's scheme."""
    rep = {**reference_report(root / "baselines/qwen2.5-72b-instruct"), "scheme": "NVFP4A16"}
    table = overall_table(rep)
    assert re.search(r"^\| NVFP4A16\s+\|", table, re.M) and not re.search(r"^\| NVFP4\s+\|", table, re.M), table
