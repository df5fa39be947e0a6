"""What every step of one gate reads: the run's context, made once by the session and never changed.

The baseline, judging and task steps (harness/session/baselines.py, judging.py, tasks.py) are plain functions of a
RunContext and of stage results; the session (harness/session/gate.py) keeps only what is computed once (memoised
results) and the one engine alive."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from harness.baselines import BaselineStore
from harness.config.locate import ModelSource
from harness.config.schema import HarnessConfig
from harness.errors import ConfigError
from harness.models import identity
from harness.stages.preflight import model_source
from harness.timings import StageClock

EXISTING = "checkpoint"  # the recipe label of a run that gates an existing checkpoint


@dataclass(frozen=True)
class RunContext:
    cfg: HarnessConfig
    backend: str
    recipe_name: str
    existing: str | None          # model.checkpoint: a quantized checkpoint gated as it is
    source: ModelSource           # model.path located once (config/locate.py)
    store: BaselineStore
    update_hint: str              # the command that creates or updates the baselines
    top_k: int                    # 0: no next-token distributions
    log: Callable[[str], None]
    clock: StageClock
    min_score: float | None = None
    update_mode: bool = False
    force: bool = False
    notes: list[str] = field(default_factory=list)  # said once in the log, repeated under the verdict

    @property
    def datasets(self) -> list[str]:
        return list(self.cfg.datasets)

    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks)

    @cached_property
    def identity(self) -> dict:
        """Which BF16 model this config names: local content, or hub id + resolved commit (computed once; an
        unpinned hub revision is warned about then)."""
        m = self.cfg.model
        ident = identity.model_identity(self.source.location, m.revision, named=m.path)
        if ident["kind"] == "hub" and not ident["pinned"]:
            got = ident["resolved"]
            self.log(f"warning: model.revision is not pinned: {m.path}@{m.revision or 'main'} "
                     + (f"resolved to {got}" if got else f"is {ident['resolved_by']}")
                     + "; pin model.revision to a commit sha for a reproducible gate")
        return ident

    def note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
            self.log(f"note: {note}")


def make_context(cfg: HarnessConfig, *, backend: str | None, recipe: str | None, min_score: float | None,
                 update_mode: bool, force: bool, update_hint: str | None, distributions: bool, log) -> RunContext:
    """The run's context from the config and the command's options (``recipe``: its --recipe; ``distributions``
    False: no next-token distributions even where the config has them, for a caller that only wants PPL)."""
    existing = cfg.model.checkpoint  # gate this quantized checkpoint as it is
    if existing and recipe and recipe != EXISTING:
        raise ConfigError(f"--recipe {recipe}: the config gates an existing checkpoint ({existing}), which "
                          "is not quantized here; drop --recipe or model.checkpoint")
    hint = update_hint or default_update_hint(cfg)
    store = BaselineStore(cfg.path_of("baselines_dir"), hint, cfg.fallback_baselines_dir)
    top_k = cfg.distributions.top_k if cfg.distributions and distributions else 0
    return RunContext(cfg, backend or cfg.backend, EXISTING if existing else (recipe or cfg.recipe), existing,
                      model_source(cfg), store, hint, top_k, log, StageClock(), min_score, update_mode, force)


def default_update_hint(cfg: HarnessConfig) -> str:
    """The command that creates or updates this config's baselines, as a missing or stale baseline's error names it."""
    src = cfg.source_path or "configs/tiny.yaml"
    if cfg.fallback_baselines_dir:  # the shipped default, run in a user's project: no path to spell out
        return "harness baseline update   (or: pytest --harness-gate-tests yes --update-baselines)"
    return f"pytest --harness-config {src} --update-baselines   (or: harness baseline update --config {src})"
