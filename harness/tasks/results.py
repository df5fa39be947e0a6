"""A task scored: per item, the log-likelihood of each request, whether it was the greedy continuation, and which
metrics the item counts as correct (lm-evaluation-harness's ``process_results``); a generated task keeps each
generation and its extracted answer. Scoring goes through the backend interface only (``loglikelihood``,
``generate_until``), so a task rides in the engine the gate already started."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from harness.tasks.definitions import MAX_GEN_TOKS, UNTIL, exact_match, strict_match
from harness.tasks.prepare import PreparedTask


@dataclass(frozen=True)
class TaskScore:
    task: str
    correct: dict                      # metric -> per-item 0/1 (lists)
    lls: list = field(default_factory=list)       # per item: the log-likelihood of each of its requests
    greedy: list = field(default_factory=list)    # per item: whether each request's continuation was all greedy
    generations: list = field(default_factory=list)  # per item (generated tasks): the generated text
    answers: list = field(default_factory=list)      # per item (generated tasks): the extracted answer
    eval_s: float = 0.0
    target_tokens: int = 0             # continuation tokens scored (lambada's target perplexity)
    perplexity: bool = False           # the task reports its target's perplexity (lambada)
    shared: dict | None = None         # what the engine took from its prefix cache for these requests (vLLM)

    @property
    def n(self) -> int:
        return len(next(iter(self.correct.values()))) if self.correct else 0

    def accuracy(self, metric: str) -> float:
        v = self.correct[metric]
        return sum(v) / len(v) if v else math.nan

    def metrics(self) -> dict:
        out = {m: self.accuracy(m) for m in self.correct}
        if self.lls and self.perplexity:
            out["perplexity"] = target_perplexity(self.lls)
        return out


def target_perplexity(lls: list) -> float:
    """lm-eval's ``perplexity`` aggregation for lambada: exp(-mean over items of the target's log-likelihood)."""
    vals = [x[0] for x in lls]
    return math.exp(-sum(vals) / len(vals))


def argmax(values) -> int:
    """The first index of the largest value (numpy.argmax's tie rule)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def item_correct(prep: PreparedTask, lls: list, greedy: list) -> dict:
    """Per item and metric, 0/1 as lm-eval's process_results decides."""
    out: dict[str, list[int]] = {m: [] for m in prep.metrics if m != "perplexity"}
    for item, ll, gr in zip(prep.items, lls, greedy):
        if prep.kind == "greedy":
            out["acc"].append(int(all(gr)))
            continue
        if "acc" in out:
            out["acc"].append(int(argmax(ll) == item.gold))
        if "acc_norm" in out:
            out["acc_norm"].append(int(argmax([v / n for v, n in zip(ll, item.norm_lengths)]) == item.gold))
    return out


def score_task(engine, prep: PreparedTask, progress=None) -> TaskScore:
    """All of one task's requests in one call to the engine (requests asked twice are asked once)."""
    t0 = time.time()
    if prep.kind == "generate":
        return _generated(engine, prep, t0)
    unique = prep.distinct_requests
    where = {r: i for i, r in enumerate(unique)}
    before = dict(getattr(engine, "shared", None) or {})
    res = engine.loglikelihood([(list(c), list(t)) for c, t in unique], progress=progress)
    after = getattr(engine, "shared", None)
    lls = [[] for _ in prep.items]
    greedy = [[] for _ in prep.items]
    for r, owner in zip(prep.requests, prep.owners):
        ll, g = res[where[r]]
        lls[owner].append(ll)
        greedy[owner].append(bool(g))
    return TaskScore(task=prep.name, correct=item_correct(prep, lls, greedy), lls=lls, greedy=greedy,
                     eval_s=time.time() - t0, target_tokens=sum(len(t) for _, t in prep.requests),
                     perplexity="perplexity" in prep.metrics,
                     shared={k: v - before.get(k, 0) for k, v in after.items()} if after else None)


def _generated(engine, prep: PreparedTask, t0: float) -> TaskScore:
    texts = engine.generate_until([list(p) for p in prep.prompts], until=list(UNTIL), max_tokens=MAX_GEN_TOKS)
    answers = [strict_match(t) for t in texts]
    correct = [int(exact_match(a, item.gold)) for a, item in zip(answers, prep.items)]
    return TaskScore(task=prep.name, correct={"exact_match": correct}, generations=texts, answers=answers,
                     eval_s=time.time() - t0)
