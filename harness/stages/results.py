"""The gate's stages as functions with typed, frozen results. ``harness.stages.run.run_gate`` chains them for the CLI and the
pytest plugin; ``harness.session.gate.GateSession`` keeps each result once made (a pytest run asks for them one test at a
time) and owns what lives between stages (the one engine alive, the baselines store, the log, the clock).

=========  ===========================================  =============================  =============================
stage      takes                                        returns                        where
=========  ===========================================  =============================  =============================
prepare    the config, a tokenizer                      :class:`Prepared`              harness.stages.prepare, per dataset
provide    the config, recipe, calibration, cache       :class:`Checkpoint`            harness.stages.provide.CheckpointProvider
score      one started engine, the prepared data        :class:`Scores` (DatasetScore  :func:`score`, :func:`score_dataset`
                                                        per dataset)
judge      scores, BF16 baselines, thresholds, limits   harness.stages.judge.Verdict          harness.stages.judge (pure functions)
render     the report dict, the run's log               :class:`ReportFiles`           :func:`render` (harness.report.build)
=========  ===========================================  =============================  =============================
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from harness.data import PreparedDataset
from harness.metrics import DatasetScore


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
        from harness.metrics import overall_nll

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


def score_dataset(engine, prep: PreparedDataset, *, top_k: int = 0, token_detail: bool = False,
                  progress=None) -> DatasetScore:
    """One dataset through ``engine.loglikelihood_rolling``: per-document NLL sums and token counts (the first
    token of each document unscored), with the per-token logprobs and top-k next tokens when asked for."""
    t0 = time.time()
    res = engine.loglikelihood_rolling(prep.token_ids, progress=progress, token_logprobs=token_detail, top_k=top_k)
    topk = None
    if top_k:
        from harness.distributions import from_results

        topk = from_results(res, prep.token_ids, top_k, getattr(engine, "name", "backend"))
    return DatasetScore(nll_sums=[r.nll_sum for r in res], n_tokens=[r.n_tokens for r in res],
                        eval_s=time.time() - t0, words=prep.words, bytes=prep.bytes,
                        token_logprobs=[r.token_logprobs for r in res] if token_detail else None, topk=topk)


def score(engine, prepared: Prepared, precision: str, *, top_k: int = 0, token_detail: bool = False) -> Scores:
    """Every prepared dataset scored by one started engine."""
    return Scores(precision, {n: score_dataset(engine, prepared[n], top_k=top_k, token_detail=token_detail)
                              for n in prepared.names}, engine.info())


def render(report: dict, report_dir: Path, log_lines: list[str], token_logprobs=None,
           time_breakdown=None) -> ReportFiles:
    """report.json, report.md, chart.svg, gate.log (and the engine's log, per-token files) in a new folder under
    ``report_dir``, written atomically (harness.report.build.write_report)."""
    from harness.report.build import write_report

    return ReportFiles.of(write_report(report, report_dir, log_lines, token_logprobs, time_breakdown))
