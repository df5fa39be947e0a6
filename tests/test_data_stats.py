"""`harness data stats` on local copies in the hub schemas, with a local tokenizer dir: no GPU, no hub."""
from __future__ import annotations

import json

import pytest

from harness.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from harness.tiny.corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _stats(capsys, *args) -> list[dict]:
    assert main(["data", "stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_from_the_config(capsys):
    rows = _stats(capsys)
    assert [r["dataset"] for r in rows] == ["wikitext2", "ultrachat"]
    assert rows[0]["kept_texts"] == 109 and rows[0]["dropped_short"] == 91


def test_from_flags_on_a_snapshot_folder_a_jsonl_file_and_a_saved_dataset(capsys, corpus, root, tmp_path):
    tok = str(root / "harness/tiny/model")
    snap = _stats(capsys, "--dataset", "wikitext2", "--data-path", str(corpus / "wikitext"), "--tokenizer", tok,
                  "--max-model-len", "512")[0]
    assert snap["kept_texts"] == 109 and snap["tokens"] == 7459 and snap["fingerprint"] == "dfefe49e83fc8f33"

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
    assert out.startswith("| dataset | requested | selected | kept_texts |")
    assert main(["data", "stats", "--dataset", "wikitext2"]) == 2
    assert "needs --tokenizer" in capsys.readouterr().err
    assert main(["data", "stats", "--dataset", "ultrachat", "--data-path", str(corpus / "wikitext"),
                 "--tokenizer", str(root / "harness/tiny/model")]) == 2
    assert "no files for split 'test_sft'" in capsys.readouterr().err
