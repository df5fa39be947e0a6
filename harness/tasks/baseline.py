"""A task's BF16 baseline: ``<baselines_dir>/<model>/tasks/<task>.json``, every item's correctness, log-likelihoods
and (generated tasks) extracted answer, with the fingerprint of the items it was scored on. Written atomically like
the perplexity baselines; a missing one names the command that makes it; one made from other items is refused."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.errors import BaselineError
from harness.tasks.results import TaskScore

SCHEMA_VERSION = 1


@dataclass
class TaskBaseline:
    model: str
    task: str
    fingerprint: str
    n: int
    metrics: dict                  # metric -> BF16 value (accuracies as fractions; lambada's target perplexity)
    correct: dict                  # metric -> per-item 0/1
    lls: list = field(default_factory=list)
    greedy: list = field(default_factory=list)
    answers: list = field(default_factory=list)
    generations: list = field(default_factory=list)
    data: dict = field(default_factory=dict)        # source, limit, tokenizer, requests
    provenance: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=None, separators=(",", ":")) + "\n"

    def inconsistency(self) -> str | None:
        """Why its numbers do not add up: every per-item list as long as n, each accuracy the mean of its items."""
        for m, v in self.correct.items():
            if len(v) != self.n or any(x not in (0, 1) for x in v):
                return f"correct[{m}] holds {len(v)} items of 0/1 for n {self.n}"
            if m in self.metrics and abs(sum(v) / self.n - self.metrics[m]) > 1e-9:
                return f"{m} {self.metrics[m]} is not the mean of its items ({sum(v) / self.n})"
        for key in ("lls", "greedy", "answers"):
            v = getattr(self, key)
            if v and len(v) != self.n:
                return f"{key} holds {len(v)} items for n {self.n}"
        return None

    def score(self) -> TaskScore:
        """The stored BF16 side as a TaskScore (what the paired statistics take)."""
        return TaskScore(task=self.task, correct=self.correct, lls=self.lls, greedy=self.greedy,
                         answers=self.answers, generations=self.generations, perplexity="perplexity" in self.metrics)


def task_path(root: Path, model: str, task: str) -> Path:
    return Path(root) / model / "tasks" / f"{task}.json"


def baseline_from_score(model: str, prep, score: TaskScore, provenance: dict, limit: int | None) -> TaskBaseline:
    return TaskBaseline(model=model, task=prep.name, fingerprint=prep.fingerprint, n=prep.n,
                        metrics={k: v for k, v in score.metrics().items() if math.isfinite(v)},
                        correct={k: list(v) for k, v in score.correct.items()},
                        lls=[[round(x, 6) for x in ll] for ll in score.lls], greedy=score.greedy,
                        answers=score.answers, generations=score.generations,
                        data={**prep.summary(), "limit": limit, "tokenizer": prep.tokenizer_id},
                        provenance=provenance)


def write(root: Path, b: TaskBaseline) -> Path:
    p = task_path(root, b.model, b.task)
    atomic_write_text(p, b.to_json())
    return p


def load(path: Path, model: str, task: str, hint: str) -> TaskBaseline:
    if not path.exists():
        raise BaselineError(f"task baseline not found: {path} (the config gates task {task!r})\n  create it with: "
                            f"{hint}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BaselineError(f"{path}: unreadable JSON ({e}); recreate it with: {hint}") from None
    if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(f"{path}: not a task baseline of schema {SCHEMA_VERSION}; recreate it with: {hint}")
    try:
        b = TaskBaseline(**d)
    except TypeError as e:
        raise BaselineError(f"{path}: malformed task baseline ({e}); recreate it with: {hint}") from None
    if (b.model, b.task) != (model, task):
        raise BaselineError(f"{path}: holds model {b.model!r} task {b.task!r}, expected {model!r} {task!r}")
    why = b.inconsistency()
    if why:
        raise BaselineError(f"{path}: inconsistent task baseline: {why} (edited or damaged); rebuild it with: {hint}")
    return b


def check_matches(b: TaskBaseline, prep, path: Path, hint: str) -> None:
    """The items this run prepared must be the ones the baseline was scored on."""
    if (b.fingerprint, b.n) != (prep.fingerprint, prep.n):
        raise BaselineError(f"{path}: task {b.task} baseline was scored on {b.n} items (fingerprint {b.fingerprint}), "
                            f"this run prepared {prep.n} (fingerprint {prep.fingerprint}): the limit, data source, "
                            f"tokenizer or prompt changed. Re-create it with: {hint}")
