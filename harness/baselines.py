"""Stored BF16 reference results: ``baselines/<model>/<dataset>.json``.

Like pytest-regressions: a missing baseline fails and names the command that creates it; an update rewrites the
file atomically (temp file in the same folder, fsync, rename), so a crash leaves the old file or the new one, never
half of either. Before any comparison the prepared data must match the baseline's (kept_texts, tokens, fingerprint).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.errors import BaselineError
from harness.precision import BF16

SCHEMA_VERSION = 1


@dataclass
class Baseline:
    model: str
    dataset: str
    ppl: float
    nll: float
    tokens: int
    kept_texts: int
    fingerprint: str | None
    doc_nll_sums: list[float] | None = None
    doc_tokens: list[int] | None = None
    precision: str = BF16
    words: int | None = None                        # of the scored texts (lm-evaluation-harness metrics)
    bytes: int | None = None
    data: dict = field(default_factory=dict)        # token stats, rules, tokenizer, source
    provenance: dict = field(default_factory=dict)  # backend, versions, device, max_model_len, engine, date, commit
    kind: str = "baseline"                          # "baseline" or "reference-result" (never gated against)
    distributions: dict | None = None               # the BF16 top-k file beside it: file, top_k, tokens, sha256
    schema_version: int = SCHEMA_VERSION

    @property
    def has_documents(self) -> bool:
        return bool(self.doc_nll_sums) and bool(self.doc_tokens)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: str = "?") -> "Baseline":
        if not isinstance(d, dict):
            raise BaselineError(f"{where}: baseline must be a JSON object")
        v = d.get("schema_version")
        if v != SCHEMA_VERSION:
            raise BaselineError(f"{where}: baseline schema_version {v!r}, this harness reads {SCHEMA_VERSION}; "
                                "recreate it with --update-baselines")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise BaselineError(f"{where}: unknown baseline field(s) {sorted(unknown)}")
        try:
            b = cls(**d)
        except TypeError as e:
            raise BaselineError(f"{where}: malformed baseline ({e}); recreate it with --update-baselines") from None
        for name in ("ppl", "nll"):
            val = getattr(b, name)
            if not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
                raise BaselineError(f"{where}: baseline {name} is {val!r}, not a finite number")
        if b.distributions is not None and (not isinstance(b.distributions.get("file"), str)
                                            or Path(b.distributions["file"]).name != b.distributions["file"]):
            raise BaselineError(f"{where}: distributions.file must name a file beside the baseline, got "
                                f"{b.distributions.get('file')!r}")
        if b.has_documents and len(b.doc_nll_sums) != len(b.doc_tokens):  # type: ignore[arg-type]
            raise BaselineError(f"{where}: doc_nll_sums and doc_tokens differ in length")
        return b

    def inconsistency(self) -> str | None:
        """Why the baseline's numbers do not add up (None: they do). PPL must be exp(NLL) (to the 6 or 7 digits the
        reference figures carry), and with per-document sums: as many documents as kept_texts, their tokens adding to
        ``tokens`` and their NLL sums to ``nll`` (each sum is stored rounded to 1e-6)."""
        if abs(math.exp(self.nll) / self.ppl - 1) > 1e-5:
            return f"ppl {self.ppl} is not exp(nll {self.nll}) = {math.exp(self.nll):.6f}"
        if not self.has_documents:
            return None
        n = len(self.doc_tokens)
        if n != self.kept_texts:
            return f"{n} per-document sums for {self.kept_texts} kept_texts"
        if sum(self.doc_tokens) != self.tokens:
            return f"its documents hold {sum(self.doc_tokens)} tokens, the baseline says {self.tokens}"
        nll = sum(self.doc_nll_sums) / self.tokens
        if abs(nll - self.nll) > 1e-6 * n / self.tokens + 1e-9:
            return f"nll {self.nll:.6f}, but its per-document sums give {nll:.6f}"
        return None


class BaselineStore:
    """``<root>/<model>/<dataset>.json``. With a ``fallback`` (the shipped tiny baselines, read-only), a baseline the
    project lacks is read from there; writes always go to ``root``, so an update makes the project's own copy."""

    def __init__(self, root: Path, update_hint: str = "pytest --update-baselines", fallback: Path | None = None):
        self.root = Path(root)
        self.update_hint = update_hint
        self.fallback = Path(fallback) if fallback else None

    def own_path(self, model: str, dataset: str, suffix: str = ".json") -> Path:
        """The project's copy (a baseline, or with ``.tokens.npz`` its per-token file): where writes go."""
        return self.root / model / f"{dataset}{suffix}"

    def _read_path(self, model: str, dataset: str, suffix: str) -> Path:
        own = self.own_path(model, dataset, suffix)
        shipped = self.fallback / model / own.name if self.fallback is not None else None
        return shipped if shipped is not None and not own.exists() and shipped.exists() else own

    def path(self, model: str, dataset: str) -> Path:
        return self._read_path(model, dataset, ".json")

    def tokens_path(self, model: str, dataset: str) -> Path:
        return self._read_path(model, dataset, ".tokens.npz")

    def distributions_path(self, b: Baseline) -> Path:
        """The BF16 top-k file a baseline records, in the folder that baseline was read from."""
        return self.path(b.model, b.dataset).parent / b.distributions["file"]

    def exists(self, model: str, dataset: str) -> bool:
        return self.path(model, dataset).exists()

    def load(self, model: str, dataset: str) -> Baseline:
        p = self.path(model, dataset)
        if not p.exists():
            raise BaselineError(f"baseline not found: {p}\n  create it with: {self.update_hint}")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BaselineError(f"{p}: unreadable JSON ({e}); restore it from git or recreate it with: "
                                f"{self.update_hint}") from None
        b = Baseline.from_dict(d, str(p))
        if b.kind != "baseline":
            raise BaselineError(f"{p}: is a {b.kind!r}, not a baseline; the gate compares only against baselines")
        if (b.model, b.dataset) != (model, dataset):
            raise BaselineError(f"{p}: holds model {b.model!r} dataset {b.dataset!r}, expected {model!r} {dataset!r}")
        why = b.inconsistency()
        if why:
            raise BaselineError(f"{p}: inconsistent baseline: {why} (edited or damaged); rebuild it with: "
                                f"{self.update_hint}")
        return b

    def write(self, b: Baseline) -> Path:
        p = self.own_path(b.model, b.dataset)
        atomic_write_text(p, b.to_json())
        return p


def check_data_matches(b: Baseline, prepared, where: str = "") -> None:
    """Refuse to compare when the prepared data is not the data the baseline was scored on."""
    mine = {"kept_texts": prepared.stats.kept_texts, "tokens": prepared.stats.tokens, "fingerprint": prepared.fingerprint}
    theirs = {"kept_texts": b.kept_texts, "tokens": b.tokens, "fingerprint": b.fingerprint}
    diffs = [k for k in mine if theirs[k] is not None and mine[k] != theirs[k]]
    if diffs:
        rows = "\n".join(f"    {k:<12} baseline={theirs[k]!s:<20} prepared={mine[k]!s}" for k in mine)
        tok_b = b.data.get("tokenizer")
        hint = (" (different tokenizer)" if tok_b and tok_b != prepared.tokenizer_id else "")
        raise BaselineError(
            f"{where or b.dataset}: prepared data does not match the baseline{hint}:\n{rows}\n"
            "  the tokenizer, dataset revision or sampling rules changed; if that is intended, re-create the baseline "
            "(--update-baselines, with --force to accept a changed fingerprint)"
        )


def baseline_from_score(model: str, dataset: str, prep, score, provenance: dict) -> Baseline:
    """A BF16 baseline from this run's score of ``dataset``: per-document NLLs (rounded to 1e-6, for the bootstrap),
    the data it was scored on (stats, rules, tokenizer, source) and the provenance the caller gives."""
    return Baseline(model=model, dataset=dataset, ppl=score.ppl, nll=score.nll, tokens=score.tokens,
                    kept_texts=prep.stats.kept_texts, fingerprint=prep.fingerprint, words=prep.words,
                    bytes=prep.bytes, doc_nll_sums=[round(x, 6) for x in score.nll_sums],
                    doc_tokens=list(score.n_tokens),
                    data={**asdict(prep.stats), "rules": prep.rules, "tokenizer": prep.tokenizer_id,
                          "source": prep.source}, provenance=provenance)
