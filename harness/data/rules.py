"""Datasets and the reference study's sampling rules.

Rules (one function each, named after the rule):
- ``first_nonempty_texts``: WikiText-2: the first N rows whose text is not blank, stripped of leading and trailing
  whitespace (the rows are stored as ``" = Robert Boulter = \n"``). The reference's 132 kept texts / 23,922 tokens
  (Qwen2.5 tokenizer, max_model_len 2048) come out only with the strip; unstripped rows give 134 / 24,078.
- ``ultrachat_texts``: UltraChat-200k: the first N rows, ``messages`` joined as one ``role: content`` line each,
  message content as stored (not stripped: the reference joins the rows' messages as they are).
- ``apply_token_rules``: tokenize, drop texts under ``min_tokens`` tokens, truncate those longer than
  ``max_model_len - truncation_margin`` tokens.

Rows always come through ``datasets.load_dataset`` (a hub id, or a builder such as ``parquet`` / ``json`` with local
``data_files`` in the same schema). Every prepared dataset carries kept_texts, token counts and a fingerprint:
a hash of the token ids, the tokenizer and the rules, so a baseline made on other data is never compared.
No torch or datasets import at module import time.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from harness.errors import HarnessError, unknown_name

RULES_VERSION = 2  # 2: WikiText texts are stripped (fingerprints of version-1 baselines differ)


def messages_to_text(messages: Sequence[dict]) -> str:
    """UltraChat rule: one line per message, ``role: content``."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def first_nonempty_texts(rows, n: int, field_name: str = "text") -> list[str]:
    """WikiText rule: the first ``n`` rows whose text is not blank (blank rows are skipped, not counted), each
    stripped of leading and trailing whitespace."""
    out: list[str] = []
    for row in rows:
        text = (row[field_name] or "").strip()
        if text:
            out.append(text)
            if len(out) == n:
                break
    return out


def ultrachat_texts(rows, n: int) -> list[str]:
    """UltraChat rule: the first ``n`` rows, ``messages`` joined as ``role: content`` lines."""
    out: list[str] = []
    for row in rows:
        if len(out) == n:
            break
        out.append(messages_to_text(row["messages"]))
    return out


@dataclass(frozen=True)
class RuleSpec:
    """A dataset rule: how texts are selected from rows, which columns it needs, and the reference dataset it was
    written for (its usual name in configs and the hub source). A new rule is one entry here."""

    name: str
    select: Callable          # (rows, n) -> texts
    columns: frozenset        # the row columns the rule reads
    dataset: str              # the reference's name for the dataset (configs, `data stats --dataset`)
    hub: dict                 # the hub source: path, name, split


RULES: dict[str, RuleSpec] = {r.name: r for r in (
    RuleSpec("wikitext", first_nonempty_texts, frozenset({"text"}), "wikitext2",
             {"path": "wikitext", "name": "wikitext-2-raw-v1", "split": "test"}),
    RuleSpec("ultrachat", ultrachat_texts, frozenset({"messages"}), "ultrachat",
             {"path": "HuggingFaceH4/ultrachat_200k", "name": None, "split": "test_sft"}),
)}


@dataclass(frozen=True)
class TokenRules:
    n_texts: int
    max_model_len: int
    min_tokens: int = 16
    truncation_margin: int = 8
    add_special_tokens: bool = True

    @property
    def max_tokens(self) -> int:
        return self.max_model_len - self.truncation_margin


@dataclass
class TokenStats:
    requested: int
    selected: int          # texts the text rule produced (may be < requested if the split is short)
    kept_texts: int
    dropped_short: int
    truncated: int
    tokens: int            # scored tokens: sum(len(ids) - 1), the first token of each text is not scored
    total_tokens: int      # all tokens fed to the model


@dataclass(frozen=True)
class PreparedDataset:
    name: str
    rule: str
    token_ids: list[list[int]]
    stats: TokenStats
    fingerprint: str
    rules: dict
    tokenizer_id: str
    source: dict = field(default_factory=dict)
    texts: list[str] | None = None  # the kept raw texts (before truncation), only when asked for
    doc_words: list[int] | None = None  # words / UTF-8 bytes of the text each document scores (after truncation),
    doc_bytes: list[int] | None = None  # for lm-evaluation-harness's word_perplexity / byte_perplexity / bits_per_byte

    @property
    def words(self) -> int | None:
        return sum(self.doc_words) if self.doc_words is not None else None

    @property
    def bytes(self) -> int | None:
        return sum(self.doc_bytes) if self.doc_bytes is not None else None

    def summary(self) -> dict:
        return {"dataset": self.name, "rule": self.rule, **asdict(self.stats), "fingerprint": self.fingerprint,
                "tokenizer": self.tokenizer_id, "source": self.source}


def apply_token_rules(token_ids: list[list[int]], rules: TokenRules) -> tuple[list[list[int]], list[int], TokenStats]:
    """Drop texts under ``min_tokens`` tokens; truncate the rest to ``max_model_len - truncation_margin`` tokens."""
    if rules.max_tokens < rules.min_tokens:
        raise HarnessError(
            f"max_model_len {rules.max_model_len} - truncation_margin {rules.truncation_margin} = {rules.max_tokens} "
            f"is below min_tokens {rules.min_tokens}: every text would be dropped. Raise max_model_len."
        )
    kept, kept_idx = [], []
    dropped = truncated = 0
    for i, ids in enumerate(token_ids):
        if len(ids) < rules.min_tokens:
            dropped += 1
            continue
        if len(ids) > rules.max_tokens:
            ids = ids[: rules.max_tokens]
            truncated += 1
        kept.append(list(ids))
        kept_idx.append(i)
    stats = TokenStats(
        requested=rules.n_texts, selected=len(token_ids), kept_texts=len(kept), dropped_short=dropped,
        truncated=truncated, tokens=sum(len(k) - 1 for k in kept), total_tokens=sum(len(k) for k in kept),
    )
    return kept, kept_idx, stats


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the fast tokenizer's full JSON, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(token_ids: list[list[int]], tokenizer_id: str, rules: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"rules": rules, "tokenizer": tokenizer_id}, sort_keys=True).encode())
    for ids in token_ids:
        h.update(len(ids).to_bytes(4, "little"))
        h.update(b"".join(int(i).to_bytes(4, "little") for i in ids))
    return h.hexdigest()[:16]


def prepare_texts(name: str, rule: str, texts: list[str], tokenizer, rules: TokenRules, source: dict | None = None,
                  keep_texts: bool = False) -> PreparedDataset:
    if not texts:
        raise HarnessError(f"dataset {name!r}: the source gave no text (source: {source}); check split and data_files")
    enc = tokenizer(texts, add_special_tokens=rules.add_special_tokens)["input_ids"]
    kept, kept_idx, stats = apply_token_rules(enc, rules)
    scored_texts = _scored_texts(tokenizer, kept, [texts[i] for i in kept_idx], [len(enc[i]) for i in kept_idx])
    tok_id = tokenizer_fingerprint(tokenizer)
    rule_dict = {"rule": rule, "rules_version": RULES_VERSION, **asdict(rules)}
    return PreparedDataset(
        name=name, rule=rule, token_ids=kept, stats=stats, fingerprint=fingerprint(kept, tok_id, rule_dict),
        rules=rule_dict, tokenizer_id=tok_id, source=source or {},
        texts=[texts[i] for i in kept_idx] if keep_texts else None,
        doc_words=[count_words(t) for t in scored_texts], doc_bytes=[len(t.encode("utf-8")) for t in scored_texts],
    )


def count_words(text: str) -> int:
    """lm-evaluation-harness's word count (``len(re.split(r"\\s+", doc))``)."""
    return len(re.split(r"\s+", text))


def _scored_texts(tokenizer, kept: list[list[int]], raw: list[str], full_lens: list[int]) -> list[str]:
    """The text each document scores: the raw text, or for truncated documents the decoded kept tokens."""
    out = []
    for ids, text, n in zip(kept, raw, full_lens):
        if len(ids) == n or not hasattr(tokenizer, "decode"):
            out.append(text)
        else:
            out.append(tokenizer.decode(ids, skip_special_tokens=False))
    return out


def rule_spec(rule: str) -> RuleSpec:
    if rule not in RULES:
        raise unknown_name("dataset rule", rule, RULES)
    return RULES[rule]


def select_texts(rule: str, rows, n: int) -> list[str]:
    r = rule_spec(rule)
    missing = r.columns - set(getattr(rows, "column_names", None) or r.columns)
    if missing:
        raise HarnessError(f"rule {rule!r} needs column(s) {sorted(missing)}; the data has {rows.column_names}")
    return r.select(rows, n)
