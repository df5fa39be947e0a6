from __future__ import annotations

import pytest

from harness.data.rules import (TokenRules, apply_token_rules, first_nonempty_texts, messages_to_text, prepare_texts,
                                select_texts, ultrachat_texts)
from harness.data.files import load_rows
from harness.errors import HarnessError


def test_ultrachat_joins_one_role_content_line_per_message():
    row = {"messages": [{"content": "Hi there", "role": "user"}, {"content": "Hello.\nBye", "role": "assistant"}]}
    assert messages_to_text(row["messages"]) == "user: Hi there\nassistant: Hello.\nBye"
    assert ultrachat_texts([row] * 5, 3) == [messages_to_text(row["messages"])] * 3


def test_token_rules_drop_under_min_and_truncate_over_max():
    rules = TokenRules(n_texts=4, max_model_len=40, min_tokens=16, truncation_margin=8)
    ids = [list(range(15)), list(range(16)), list(range(32)), list(range(33))]
    kept, idx, st = apply_token_rules(ids, rules)
    assert idx == [1, 2, 3]
    assert [len(k) for k in kept] == [16, 32, 32]
    assert (st.kept_texts, st.dropped_short, st.truncated) == (3, 1, 1)
    assert st.tokens == 15 + 31 + 31  # first token of each text is not scored
    assert st.total_tokens == 80


def test_token_rules_refuse_max_len_below_min_tokens():
    with pytest.raises(HarnessError, match="Raise max_model_len"):
        apply_token_rules([[1] * 20], TokenRules(n_texts=1, max_model_len=20, min_tokens=16, truncation_margin=8))


def test_fingerprint_depends_on_ids_tokenizer_and_rules(fake_tokenizer):
    from tests.conftest import FakeTokenizer

    texts = [" ".join(f"w{i}" for i in range(20)), " ".join(f"v{i}" for i in range(30))]
    rules = TokenRules(n_texts=2, max_model_len=64)
    a = prepare_texts("d", "wikitext", texts, fake_tokenizer, rules)
    assert a.fingerprint == prepare_texts("d", "wikitext", texts, fake_tokenizer, rules).fingerprint
    assert a.fingerprint != prepare_texts("d", "wikitext", texts[:1], fake_tokenizer, rules).fingerprint
    assert a.fingerprint != prepare_texts("d", "wikitext", texts, FakeTokenizer("other"), rules).fingerprint
    assert a.fingerprint != prepare_texts("d", "wikitext", texts, fake_tokenizer,
                                          TokenRules(n_texts=2, max_model_len=24)).fingerprint


def test_unknown_rule_lists_the_known_ones():
    with pytest.raises(HarnessError, match="known dataset rules: ultrachat, wikitext"):
        select_texts("c4", [], 3)


def test_missing_column_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"]}), f)
    rows = load_rows("parquet", split="test", data_files=str(f))
    with pytest.raises(HarnessError, match=r"needs column\(s\) \['text'\]"):
        select_texts("wikitext", rows, 1)


def test_missing_local_file_says_what_to_check(tmp_path):
    with pytest.raises(HarnessError, match=f"{tmp_path / 'nope.parquet'}: data file not found; fix data_files"):
        load_rows("parquet", split="test", data_files=str(tmp_path / "nope.parquet"))


def test_local_json_files_are_checked_line_by_line_and_a_json_document_passes(tmp_path):
    """check_data_files: JSON lines parsed one by one (blank lines skipped, the bad one named by its number), a .json
    file that is one document (a list of rows) accepted whole, a file of blank lines holds no rows."""
    from harness.data.files import check_data_files

    doc = tmp_path / "rows.json"
    doc.write_text('[{"text": "a"},\n {"text": "b"}]')
    check_data_files(str(doc))
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(HarnessError, match=f"{lines}:3: not valid JSON \\(Expecting ',' delimiter at column 13\\)"):
        check_data_files([str(doc), str(lines)])
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(HarnessError, match="blank.jsonl holds no rows"):
        check_data_files(str(blank))


def test_hub_schemas_load_through_datasets(tmp_path):
    """The tiny corpus is written in the hub layouts; rows come back through datasets.load_dataset."""
    from harness.tiny.corpus import write_corpus

    root = write_corpus(tmp_path)
    wt = load_rows("parquet", split="test", data_files=str(root / "wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"))
    assert wt.column_names == ["text"] and wt[0]["text"] == "" and wt[1]["text"].startswith(" = ")
    uc = load_rows("parquet", split="test_sft",
                   data_files=str(root / "ultrachat_200k/data/test_sft-00000-of-00001.parquet"))
    assert uc.column_names == ["prompt", "prompt_id", "messages"]
    assert set(uc[0]["messages"][0]) == {"content", "role"}
    assert uc[0]["prompt"] == uc[0]["messages"][0]["content"]


def test_corpus_is_deterministic():
    from harness.tiny.corpus import ultrachat_rows, wikitext_rows

    assert wikitext_rows(13, 5) == wikitext_rows(13, 5)
    assert ultrachat_rows(23, 5) == ultrachat_rows(23, 5)
    assert wikitext_rows(13, 5) != wikitext_rows(14, 5)


def test_words_and_bytes_follow_the_scored_text(root):
    """lm-eval's word count; truncated documents count only the words/bytes of what was scored."""
    from transformers import AutoTokenizer

    from harness.data.rules import count_words

    assert count_words("a  b\nc") == 3
    tok = AutoTokenizer.from_pretrained(root / "harness/tiny/model")
    long = " ".join(["Maimstelmuk"] * 200)
    short = " ".join(["Maimstelmuk"] * 6)
    assert 16 <= len(tok(short)["input_ids"]) <= 56
    p = prepare_texts("d", "wikitext", [long, short], tok, TokenRules(n_texts=2, max_model_len=64))
    assert p.stats.truncated == 1
    # by hand: the tiny tokenizer spells the first "Maimstelmuk" in 6 tokens and each " Maimstelmuk" in 7 (a space
    # token first); 64 - 8 = 56 kept tokens = 6 + 7 x 7 (eight words) + the next word's space. lm-eval counts words
    # as len(re.split(r"\s+", text)): eight whitespace runs (the trailing one too) give 9; 11 + 7 x 12 + 1 = 96 bytes
    assert len(tok("Maimstelmuk", add_special_tokens=False)["input_ids"]) == 6
    assert len(tok(" Maimstelmuk", add_special_tokens=False)["input_ids"]) == 7
    assert (p.doc_words[0], p.doc_bytes[0]) == (9, 96)
    assert (p.doc_words[1], p.doc_bytes[1]) == (6, len(short.encode()))


def test_wikitext_rows_are_stripped_and_blank_rows_skipped():
    rows = [{"text": ""}, {"text": " = Robert Boulter = \n"}, {"text": " \n"}, {"text": " He was born . \n"},
            {"text": "no edges"}]
    assert first_nonempty_texts(rows, 2) == ["= Robert Boulter =", "He was born ."]
    assert first_nonempty_texts(rows, 10) == ["= Robert Boulter =", "He was born .", "no edges"]


def _word_tokenizer(bos: bool):
    """A word-level tokenizer over a fixed vocabulary, with or without a BOS it prepends (like Llama's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate("a b c d e f g h".split())}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", unk_token="<unk>")


def test_special_tokens_decide_which_token_goes_unscored():
    """Hand count: a 5-word text is 6 ids with a BOS (5 scored: every word) and 5 without (4 scored)."""
    from harness.data.rules import TokenRules, prepare_texts

    texts = ["a b c d e", "f g h"]
    rules = dict(n_texts=2, max_model_len=64, min_tokens=2)
    with_bos = prepare_texts("x", "wikitext", texts, _word_tokenizer(True), TokenRules(**rules))
    assert with_bos.token_ids[0] == [0, 2, 3, 4, 5, 6] and with_bos.stats.tokens == 5 + 3
    without = prepare_texts("x", "wikitext", texts, _word_tokenizer(True), TokenRules(**rules, add_special_tokens=False))
    assert without.token_ids[0] == [2, 3, 4, 5, 6] and without.stats.tokens == 4 + 2
    assert with_bos.fingerprint != without.fingerprint  # a baseline made one way is refused the other way
    plain = prepare_texts("x", "wikitext", texts, _word_tokenizer(False), TokenRules(**rules))
    assert plain.token_ids[0] == [2, 3, 4, 5, 6]  # no BOS in the tokenizer: nothing to add


def test_add_special_tokens_is_a_per_model_config_setting(root):
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    cfg = load_config(root / "configs/tiny.yaml", {"model.add_special_tokens": False})
    assert GateSession(cfg, quiet=True).prepared("wikitext2").rules["add_special_tokens"] is False
