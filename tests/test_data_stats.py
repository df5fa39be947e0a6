"""`harness data stats` on local copies in the hub schemas, with a local tokenizer dir: no GPU, no hub."""
from __future__ import annotations

import json
import re

import pytest

from harness.cli.main import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from harness.tiny.corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _stats(capsys, *args) -> list[dict]:
    assert main(["data", "stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def wikitext_by_hand(parquet, tokenizer_dir, n=200, min_tokens=16, max_tokens=504) -> dict:
    """The WikiText rule written out here, from the rows in the file: the first n non-blank rows, stripped,
    tokenized, those under min_tokens dropped, the rest cut at max_tokens; the first token is not scored."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [t.strip() for t in pq.read_table(parquet).column("text").to_pylist() if t.strip()][:n]
    lens = [len(tok(t)["input_ids"]) for t in texts]
    kept = [min(n_, max_tokens) for n_ in lens if n_ >= min_tokens]
    return {"selected": len(texts), "kept_texts": len(kept), "dropped_short": len(lens) - len(kept),
            "tokens": sum(k - 1 for k in kept)}


def test_from_the_config(capsys, root):
    from harness.tiny import builtin_path

    rows = _stats(capsys)
    assert [r["dataset"] for r in rows] == ["wikitext2", "ultrachat"]
    want = wikitext_by_hand(builtin_path("corpus/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"),
                            root / "harness/tiny/model")
    assert {k: rows[0][k] for k in want} == want


def test_from_flags_on_a_snapshot_folder_a_jsonl_file_and_a_saved_dataset(capsys, corpus, root, tmp_path):
    tok = str(root / "harness/tiny/model")
    snap = _stats(capsys, "--dataset", "wikitext2", "--data-path", str(corpus / "wikitext"), "--tokenizer", tok,
                  "--max-model-len", "512")[0]
    want = wikitext_by_hand(corpus / "wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet", tok)
    assert {k: snap[k] for k in want} == want
    assert snap["fingerprint"] == _stats(capsys)[0]["fingerprint"]  # the same rows through the config

    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(corpus / "ultrachat_200k/data/test_sft-00000-of-00001.parquet"),
                                 split="train")
    rows.to_json(tmp_path / "test_sft.jsonl")
    rows.save_to_disk(str(tmp_path / "saved"))
    a = _stats(capsys, "--dataset", "ultrachat", "--data-path", str(tmp_path / "test_sft.jsonl"), "--tokenizer", tok,
               "--max-model-len", "512", "--n", "50")[0]
    b = _stats(capsys, "--dataset", "ultrachat", "--data-path", str(tmp_path / "saved"), "--tokenizer", tok,
               "--max-model-len", "512", "--n", "50")[0]
    assert a["kept_texts"] == b["kept_texts"] == 50
    assert a["fingerprint"] == b["fingerprint"]  # same rows, same tokenizer, same rules


def test_table_output_and_errors(capsys, corpus, root):
    assert main(["data", "stats"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"\| dataset\s+\| requested\s+\| selected\s+\| kept_texts\s+\|", out), out
    assert main(["data", "stats", "--json"]) == 0
    for r in json.loads(capsys.readouterr().out):  # one table row per dataset, the same numbers as --json
        cells = [r[k] for k in ("dataset", "requested", "selected", "kept_texts", "dropped_short", "truncated",
                                "tokens", "fingerprint")]
        assert re.search(r"^\| " + r"\s+\| ".join(re.escape(str(c)) for c in cells) + r"\s+\|", out, re.M), out
    assert main(["data", "stats", "--dataset", "wikitext2"]) == 2
    assert "needs --tokenizer" in capsys.readouterr().err
    assert main(["data", "stats", "--dataset", "ultrachat", "--data-path", str(corpus / "wikitext"),
                 "--tokenizer", str(root / "harness/tiny/model")]) == 2
    assert "no files for split 'test_sft'" in capsys.readouterr().err
