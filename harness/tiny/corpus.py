"""Seeded synthetic corpus in the WikiText-2 and UltraChat-200k schemas.

The language is a small, learnable grammar: made-up words in classes (names, places, nouns, verbs,
adjectives), agreement rules (a noun's class fixes the verb suffix), topical articles whose title entity
recurs, and question/answer conversations whose answer copies facts from the question. A 2-layer model can
reach its entropy floor on it in a few hundred steps, which is what makes NVFP4's damage measurable.

Pure Python and deterministic: the same seed gives the same rows on every machine and Python >= 3.8.
No third-party text is used.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

CORPUS_VERSION = 3
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "kl", "gr", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "", "n", "r", "s", "l", "k", "m"]


@dataclass(frozen=True)
class Lexicon:
    names: list[str]
    places: list[str]
    nouns_a: list[str]  # class A nouns take verbs ending in -an
    nouns_b: list[str]  # class B nouns take verbs ending in -ix
    verbs: list[str]
    adjectives: list[str]
    colors: list[str]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def make_lexicon(seed: int = 1234) -> Lexicon:
    rng = random.Random(seed)
    seen: set[str] = set()

    def words(n: int, lo: int, hi: int) -> list[str]:
        out = []
        while len(out) < n:
            w = _word(rng, rng.randint(lo, hi))
            if w not in seen:
                seen.add(w)
                out.append(w)
        return out

    return Lexicon(
        names=[w.capitalize() for w in words(40, 2, 3)],
        places=[w.capitalize() for w in words(25, 2, 3)],
        nouns_a=words(30, 1, 2),
        nouns_b=words(30, 1, 2),
        verbs=words(25, 1, 2),
        adjectives=words(30, 1, 2),
        colors=words(8, 1, 1),
    )


@dataclass(frozen=True)
class Shape:
    """Document lengths: sentences per paragraph, paragraphs per section, question/answer turns per conversation."""

    sentences: tuple[int, int] = (2, 7)
    paragraphs: tuple[int, int] = (1, 3)
    turns: tuple[int, int] = (1, 3)


# Longer documents for the reference workload's shape: with the tiny tokenizer at max_model_len 2048, 200 WikiText
# rows keep ~130 texts / ~24k scored tokens and 200 UltraChat rows ~228k tokens, like the reference study's
# Qwen2.5 numbers (132 texts / 23,922 tokens and 200 / 228,323): the 72B-shape gate times the same work.
REFERENCE_SHAPE = Shape(sentences=(4, 19), paragraphs=(2, 4), turns=(2, 8))


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (r + 1) ** s for r in range(n)]


class Grammar:
    """Sentence and document generators over one lexicon.

    Word choices are Zipfian and conditioned on context (each noun prefers its own verbs and adjectives, each name
    has a home place), so the model must store graded associations in its weights: the knowledge that weight
    quantization damages first, which is what makes the NVFP4 gate on this model meaningful.
    """

    def __init__(self, lexicon: Lexicon, rng: random.Random, shape: "Shape | None" = None):
        self.lx = lexicon
        self.rng = rng
        self.shape = shape or Shape()
        table = random.Random(99)  # the associations are part of the language, not of the sample
        nouns = lexicon.nouns_a + lexicon.nouns_b
        self.verbs_of = {n: table.sample(lexicon.verbs, len(lexicon.verbs)) for n in nouns}
        self.adjs_of = {n: table.sample(lexicon.adjectives, len(lexicon.adjectives)) for n in nouns}
        self.home_of = {n: table.choice(lexicon.places) for n in lexicon.names}
        self.w = {k: _zipf_weights(k) for k in {len(lexicon.verbs), len(lexicon.adjectives), len(lexicon.names),
                                                len(lexicon.places), len(lexicon.nouns_a), len(lexicon.colors)}}

    def pick(self, items: list[str]) -> str:
        return self.rng.choices(items, weights=self.w[len(items)])[0]

    def noun(self) -> tuple[str, str]:
        if self.rng.random() < 0.5:
            return self.pick(self.lx.nouns_a), "an"
        return self.pick(self.lx.nouns_b), "ix"

    def verb(self, suffix: str, noun: str | None = None) -> str:
        return self.pick(self.verbs_of[noun] if noun else self.lx.verbs) + suffix

    def adj(self, noun: str) -> str:
        return self.pick(self.adjs_of[noun])

    def place_of(self, name: str) -> str:
        return self.home_of[name] if self.rng.random() < 0.8 else self.pick(self.lx.places)

    def sentence(self, topic: str, place: str) -> str:
        r = self.rng
        lx = self.lx
        noun, suf = self.noun()
        noun2, _ = self.noun()
        kind = r.randrange(6)
        if kind == 0:
            return f"{topic} {self.verb('an')} the {self.adj(noun)} {noun} in {place} ."
        if kind == 1:
            return f"The {noun} of {topic} {self.verb(suf, noun)} a {self.pick(lx.colors)} {noun2} ."
        if kind == 2:
            year = r.randint(1800, 1999)
            return f"In {year} , {topic} moved to {place} with {r.randint(2, 9)} {noun}s ."
        if kind == 3:
            adj = self.adj(noun)
            return f"Every {adj} {noun} {self.verb(suf, noun)} , and every {adj} {noun2} is {self.pick(lx.colors)} ."
        if kind == 4:
            other = self.pick(lx.names)
            return f"{topic} and {other} {self.verb('an')} the {noun} of {place} ."
        return f"The {self.pick(lx.colors)} {noun} {self.verb(suf, noun)} near {place} , said {topic} ."

    def paragraph(self, topic: str, place: str) -> str:
        return " ".join(self.sentence(topic, place) for _ in range(self.rng.randint(*self.shape.sentences)))

    def article(self) -> list[str]:
        """Rows of one article in the raw WikiText file layout (each row one line, blank rows empty)."""
        r = self.rng
        topic = self.pick(self.lx.names)
        place = self.place_of(topic)
        rows = ["", f" = {topic} = \n", ""]
        for _ in range(r.randint(1, 3)):
            heading = r.choice(["Early life", "Career", "Legacy", "Works", f"Life in {place}"])
            rows += [f" = = {heading} = = \n", ""]
            for _ in range(r.randint(*self.shape.paragraphs)):
                rows += [f" {self.paragraph(topic, place)} \n", ""]
            if r.random() < 0.3:  # short rows like WikiText's captions: dropped by the min-token rule
                rows += [f" {r.choice(self.lx.adjectives)} {self.noun()[0]} \n", ""]
        return rows

    def conversation(self) -> list[dict[str, str]]:
        r = self.rng
        lx = self.lx
        who = self.pick(lx.names)
        place = self.place_of(who)
        messages = []
        for _ in range(r.randint(*self.shape.turns)):
            noun, suf = self.noun()
            color = self.pick(lx.colors)
            q = r.randrange(3)
            if q == 0:
                user = f"What does the {noun} of {who} do in {place} ?"
                answer = f"The {noun} of {who} {self.verb(suf, noun)} in {place} . " + self.paragraph(who, place)
            elif q == 1:
                user = f"Tell me about {who} and the {color} {noun} ."
                answer = f"{who} {self.verb('an')} the {color} {noun} . " + self.paragraph(who, place)
            else:
                n = r.randint(2, 9)
                user = f"Why does {who} keep {n} {noun}s ?"
                answer = f"{who} keeps {n} {noun}s because every {noun} {self.verb(suf, noun)} . " + self.paragraph(who, place)
            messages += [{"content": user, "role": "user"}, {"content": answer, "role": "assistant"}]
        return messages


def wikitext_rows(seed: int, n_articles: int, shape: Shape | None = None) -> list[str]:
    lx = make_lexicon()
    g = Grammar(lx, random.Random(seed), shape)
    rows: list[str] = []
    for _ in range(n_articles):
        rows += g.article()
    return rows


def ultrachat_rows(seed: int, n_rows: int, shape: Shape | None = None) -> list[dict]:
    lx = make_lexicon()
    g = Grammar(lx, random.Random(seed), shape)
    out = []
    for i in range(n_rows):
        messages = g.conversation()
        out.append({"prompt": messages[0]["content"], "prompt_id": f"{seed:04d}{i:06d}", "messages": messages})
    return out


# split -> (seed, size); train splits feed the model and calibration, test splits the gate.
WIKITEXT_SPLITS = {"train": (11, 400), "validation": (12, 20), "test": (13, 60)}
ULTRACHAT_SPLITS = {"train_sft": (21, 1500), "test_sft": (23, 300)}
# the reference-shaped test splits, under refshape/ (same layout)
REFSHAPE_SPLITS = {"wikitext": {"test": (14, 60)}, "ultrachat": {"test_sft": (24, 200)}}


def write_corpus(root: Path) -> Path:
    """Write the corpus as parquet files laid out like the hub repos (and the reference-shaped test splits under
    ``refshape/``); returns ``root``. Idempotent, atomic per file."""
    root = Path(root)
    _write_splits(root, WIKITEXT_SPLITS, ULTRACHAT_SPLITS, None)
    _write_splits(root / "refshape", REFSHAPE_SPLITS["wikitext"], REFSHAPE_SPLITS["ultrachat"], REFERENCE_SHAPE)
    (root / "VERSION").write_text(json.dumps({"corpus_version": CORPUS_VERSION}))
    return root


def _write_splits(root: Path, wikitext: dict, ultrachat: dict, shape: Shape | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    wt = root / "wikitext" / "wikitext-2-raw-v1"
    uc = root / "ultrachat_200k" / "data"
    wt.mkdir(parents=True, exist_ok=True)
    uc.mkdir(parents=True, exist_ok=True)

    def put(table: pa.Table, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)

    for split, (seed, n) in wikitext.items():
        put(pa.table({"text": wikitext_rows(seed, n, shape)}), wt / f"{split}-00000-of-00001.parquet")
    msg_type = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    for split, (seed, n) in ultrachat.items():
        rows = ultrachat_rows(seed, n, shape)
        table = pa.table(
            {
                "prompt": [r["prompt"] for r in rows],
                "prompt_id": [r["prompt_id"] for r in rows],
                "messages": pa.array([r["messages"] for r in rows], type=msg_type),
            }
        )
        put(table, uc / f"{split}-00000-of-00001.parquet")
