"""A task made ready to score: its items (harness/tasks/definitions.py) and their requests as token ids.

Log-likelihood requests are encoded as lm-evaluation-harness encodes them (``LM._encode_pair``): trailing spaces of the
context move to the continuation, context + continuation is encoded whole and the continuation's tokens are the
tail past the context's own encoding; the tokenizer's special tokens as the config says (``model.add_special_tokens``,
lm-eval's default: the tokenizer's own). A request longer than ``max_model_len`` keeps its last tokens (lm-eval keeps
max_length + 1). The fingerprint hashes every token id, gold answer and normalisation length: a baseline made on other
items, another tokenizer or another prompt is never compared.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

from harness.errors import DataError
from harness.tasks.definitions import Item, TaskSpec, gsm8k_item, gsm8k_shots, make_item

PROMPT_VERSION = 1  # bumped when a task's prompt or encoding changes (part of the fingerprint)


@dataclass(frozen=True)
class PreparedTask:
    name: str
    kind: str
    metrics: tuple[str, ...]
    items: tuple[Item, ...]
    requests: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]   # (context ids, continuation ids), items in order
    owners: tuple[int, ...]                                          # the item of each request
    prompts: tuple[tuple[int, ...], ...]                             # a generated task's prompt ids, per item
    fingerprint: str
    source: str
    tokenizer_id: str

    @property
    def n(self) -> int:
        return len(self.items)

    @cached_property
    def distinct_requests(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Each distinct request once, in first-seen order: what is sent to an engine (the same request asked by
        two items is scored once)."""
        return list(dict.fromkeys(self.requests))

    def item_requests(self, i: int) -> list[int]:
        return [j for j, o in enumerate(self.owners) if o == i]

    def summary(self) -> dict:
        return {"task": self.name, "items": self.n, "requests": len(self.requests), "source": self.source,
                "fingerprint": self.fingerprint,
                "tokens": sum(len(c) + len(t) for c, t in self.requests) + sum(len(p) for p in self.prompts)}


def encode(tok, text: str, add_special_tokens: bool) -> list[int]:
    return list(tok.encode(text, add_special_tokens=add_special_tokens))


def encode_many(tok, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Every text encoded as ``tok.encode`` encodes it, in one batch call where the tokenizer takes one (a fast
    tokenizer encodes a batch in parallel: HellaSwag's 80k strings in seconds, not a quarter of a minute)."""
    if not texts:
        return []
    if callable(tok) and not isinstance(tok, type):
        try:
            return [list(ids) for ids in tok(texts, add_special_tokens=add_special_tokens)["input_ids"]]
        except (TypeError, KeyError):
            pass
    return [encode(tok, t, add_special_tokens) for t in texts]


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's ``_encode_pair``: the context's trailing spaces move to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pairs(tok, pairs: list[tuple[str, str]], add_special_tokens: bool = True) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``_encode_pair`` for a causal model, for many pairs: context + continuation encoded whole, the
    continuation's tokens the tail past the context's own encoding."""
    pairs = [split_pair(c, t) for c, t in pairs]
    contexts = list(dict.fromkeys(c for c, _ in pairs))  # a context shared by several choices is encoded once
    ctx_ids = dict(zip(contexts, encode_many(tok, contexts, add_special_tokens)))
    wholes = encode_many(tok, [c + t for c, t in pairs], add_special_tokens)
    return [(ctx_ids[c], w[len(ctx_ids[c]):]) for (c, _), w in zip(pairs, wholes)]


def encode_pair(tok, context: str, continuation: str, add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` for a causal model."""
    return encode_pairs(tok, [(context, continuation)], add_special_tokens)[0]


def build_items(spec: TaskSpec, rows: list[dict], where: str, limit: int | None,
                shots_pool: list[dict] | None = None) -> list[Item]:
    """The first ``limit`` rows (all without one) as items; a generated task's items with their few-shot examples."""
    rows = rows[:limit] if limit else rows
    if spec.kind == "generate":
        shots = gsm8k_shots(shots_pool or [], len(rows)) if shots_pool else [[] for _ in rows]
        return [gsm8k_item(r, i, s) for i, (r, s) in enumerate(zip(rows, shots))]
    return [make_item(spec, r, f"{where}:{i + 1}") for i, r in enumerate(rows)]


def chat_context(tok, context: str) -> str:
    """The context as one user turn of the tokenizer's chat template, the assistant's turn opened after it (lighteval's
    ``--use_chat_template``, prompt_manager.get_examples: apply_chat_template(add_generation_prompt=True)); its
    trailing newline then moves to the continuation, as every context's trailing whitespace does."""
    if not getattr(tok, "chat_template", None):
        raise DataError(f"chat_template: the tokenizer {getattr(tok, 'name_or_path', '')!r} has no chat template; "
                        "set chat_template: false for this task, or use a model whose tokenizer has one")
    return tok.apply_chat_template([{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True)


def prepare_task(spec: TaskSpec, items: list[Item], tok, *, max_model_len: int, add_special_tokens: bool,
                 source: str, tokenizer_id: str, chat_template: bool = False, name: str | None = None) -> PreparedTask:
    """The items' requests as token ids. ``name``: the config's name for the task (default: the task's own)."""
    requests, owners = [], []
    pairs = [(i, r) for i, item in enumerate(items) for r in item.requests]
    if chat_template:
        wrapped = {c: chat_context(tok, c) for c in dict.fromkeys(c for _, (c, _) in pairs)}
        pairs = [(i, (wrapped[c], t)) for i, (c, t) in pairs]
    for (i, (_, cont)), (c, t) in zip(pairs, encode_pairs(tok, [r for _, r in pairs], add_special_tokens)):
        if not t:
            raise ValueError(f"{spec.name} item {i + 1}: the continuation {cont!r} encodes to no tokens")
        whole = (c + t)[-max_model_len:]
        requests.append((tuple(whole[: len(whole) - len(t)]), tuple(t)))
        owners.append(i)
    prompts = [tuple(p) for p in encode_many(tok, [it.prompt for it in items if it.prompt is not None],
                                              add_special_tokens)]
    styled = {k: v for k, v in (("style", spec.style), ("chat_template", chat_template))
              if v not in ("lm-eval", False)}  # only when set: the lm-eval style's fingerprints stay as they were
    h = hashlib.sha256(json.dumps({"task": spec.name, "version": PROMPT_VERSION, "tokenizer": tokenizer_id,
                                   **styled, "requests": requests, "prompts": prompts,
                                   "gold": [it.gold for it in items],
                                   "norm": [it.norm_lengths for it in items]}).encode()).hexdigest()[:16]
    return PreparedTask(name=name or spec.name, kind=spec.kind, metrics=spec.metrics, items=tuple(items),
                        requests=tuple(requests), owners=tuple(owners), prompts=tuple(prompts), fingerprint=h,
                        source=source, tokenizer_id=tokenizer_id)
