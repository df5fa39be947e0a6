"""The stages' frozen results: :class:`Prepared` (prepare), :class:`Checkpoint` (provide), :class:`Scores` (score) and
:class:`ReportFiles` (render); the judge stage's is :class:`harness.stages.judge.Verdict`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from harness.data.rules import PreparedDataset
from harness.metrics import DatasetScore, overall_nll


def _frozen_map(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Prepared:
    """Every dataset of the config, tokenized and filtered by its rules, in the config's order."""

    datasets: Mapping[str, PreparedDataset]

    def __post_init__(self):
        object.__setattr__(self, "datasets", _frozen_map(self.datasets))

    @property
    def names(self) -> list[str]:
        return list(self.datasets)

    def __getitem__(self, name: str) -> PreparedDataset:
        return self.datasets[name]

    @property
    def tokens(self) -> int:
        """Scored tokens of all datasets."""
        return sum(p.stats.tokens for p in self.datasets.values())


@dataclass(frozen=True)
class Checkpoint:
    """The quantized checkpoint a gate scores: built by llm-compressor, served from the content-addressed cache, or
    an existing one (``recipe`` None). ``info`` holds the scheme, recipe hash, cache key, build time and sizes."""

    path: Path
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "info", _frozen_map(self.info))

    @property
    def cache_hit(self) -> bool | None:
        """True: served from the cache; False: built by this run; None: an existing checkpoint, not quantized here."""
        return self.info.get("cache_hit")

    @property
    def scheme(self) -> str | None:
        return self.info.get("scheme")


@dataclass(frozen=True)
class Scores:
    """One precision's scores: per-document NLL sums and token counts of every dataset, and what the engine was
    (backend, kernel that ran, start time, compilation)."""

    precision: str
    datasets: Mapping[str, DatasetScore]
    engine: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "datasets", _frozen_map(self.datasets))
        object.__setattr__(self, "engine", _frozen_map(self.engine))

    def __getitem__(self, name: str) -> DatasetScore:
        return self.datasets[name]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.datasets.values())

    @property
    def documents(self) -> dict:
        """dataset -> (per-document NLL sums, token counts): what recipes and records are paired on."""
        return {n: (s.nll_sums, s.n_tokens) for n, s in self.datasets.items()}

    @property
    def nll(self) -> float:
        """Token-weighted NLL over every dataset (the gate's overall NLL)."""
        return overall_nll({n: (s.nll, s.tokens) for n, s in self.datasets.items()})[0]


@dataclass(frozen=True)
class ReportFiles:
    """The report folder a gate wrote (atomically: all of it or nothing) and the files in it."""

    folder: Path
    files: tuple[str, ...]

    @classmethod
    def of(cls, folder: Path) -> "ReportFiles":
        folder = Path(folder)
        return cls(folder, tuple(sorted(p.name for p in folder.iterdir())))
