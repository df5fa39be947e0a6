"""A SentencePiece-BPE tokenizer rebuilt from a GGUF's vocabulary, for models whose GGUF transformers converts wrongly.

transformers 5.17 reads a Gemma 3 GGUF's tokenizer (``tokenizer.ggml.model = llama``: SentencePiece BPE, scores
= minus the merge rank) as a Unigram model over those scores, which splits words into pieces the model never saw
("Hello world, this is a test." became 12 tokens instead of 8, and the model's text came out as "is is is is").
SentencePiece's BPE merges the adjacent pair whose merged piece has the highest score, so the merges follow from
the vocabulary and its scores alone: every split of a piece into two pieces of the vocabulary is a merge, ranked by
the merged piece's score (what transformers' own SentencePiece converter does with a ``.model`` file). The rest is
Gemma's SentencePiece settings, read from the GGUF: spaces as "▁", no dummy prefix, byte fallback for characters
outside the vocabulary, ``<bos>`` prepended.
"""
from __future__ import annotations

from pathlib import Path


def _field(reader, name: str):
    f = reader.fields.get(name)
    if f is None:
        return None
    parts = [f.parts[i] for i in f.data]
    return parts


def read_vocab(gguf: Path) -> dict:
    """tokens, scores, token types and the special ids of a GGUF's tokenizer."""
    from gguf import GGUFReader

    r = GGUFReader(str(gguf))
    tokens = [bytes(p).decode("utf-8") for p in _field(r, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in _field(r, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in _field(r, "tokenizer.ggml.token_type")]

    def one(name, default=None):
        v = _field(r, name)
        return v[0][0].item() if v else default

    return {"model": bytes(_field(r, "tokenizer.ggml.model")[0]).decode(), "tokens": tokens, "scores": scores,
            "types": types, "bos": one("tokenizer.ggml.bos_token_id"), "eos": one("tokenizer.ggml.eos_token_id"),
            "unk": one("tokenizer.ggml.unknown_token_id"), "pad": one("tokenizer.ggml.padding_token_id"),
            "add_bos": bool(one("tokenizer.ggml.add_bos_token", True)),
            "add_space_prefix": bool(one("tokenizer.ggml.add_space_prefix", False))}


def bpe_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a vocabulary piece into two vocabulary pieces, best-scored merged piece first (ties: the
    left piece's id, then the right's)."""
    index = {t: i for i, t in enumerate(tokens)}
    out = []
    for piece, score in zip(tokens, scores):
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in index and right in index:
                out.append((-score, index[left], index[right], left, right))
    out.sort()
    return [(left, right) for *_, left, right in out]


NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # GGUF token types (llama.cpp's enum)


def sentencepiece_bpe_tokenizer(gguf: Path):
    """A transformers fast tokenizer equivalent to the GGUF's SentencePiece BPE tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    v = read_vocab(gguf)
    if v["model"] != "llama":
        raise ValueError(f"{gguf}: tokenizer.ggml.model is {v['model']!r}, not SentencePiece ('llama')")
    tokens = v["tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab, bpe_merges(tokens, v["scores"]), unk_token=tokens[v["unk"]], fuse_unk=True,
                        byte_fallback=True))
    norm = [normalizers.Replace(" ", "▁")]
    if v["add_space_prefix"]:
        norm.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, v["types"])
               if ty in (CONTROL, USER_DEFINED) and t]
    tok.add_special_tokens(special)
    bos = tokens[v["bos"]]
    if v["add_bos"]:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, v["bos"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=tokens[v["eos"]],
                                   unk_token=tokens[v["unk"]], pad_token=tokens[v["pad"]] if v["pad"] is not None
                                   else None, add_bos_token=v["add_bos"])
