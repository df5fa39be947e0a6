"""Stored results of a recipe, and the recipe regression check.

A recipe record is what one gate run of a recipe measured, per document, on the gate's data:
``<baselines_dir>/<model>/recipes/<recipe>.json`` holds the overall score with its interval, the kernel and backend,
and per dataset the data fingerprint and each document's NLL sum and token count. It is written whole or not at all
(``--record-recipe`` on `harness gate`, `harness compare` and pytest).

The check (config ``recipe_regression: {best: NAME, margin: 0}``): the recipe gated now against the stored record of
the best recipe, on the same documents, as `harness compare` pairs two recipes (a paired bootstrap of score(now) -
score(best), :func:`harness.recipes.compare.pair_difference`). It fails when the whole interval lies below ``-margin``:
the recipe is then worse than the best beyond doubt (at the configured confidence) and beyond what the user allows.
A rebuild of the best recipe itself is checked against its own record, so a new llm-compressor or a changed
recipe file that makes it worse fails too. Torch-free."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.errors import BaselineError
from harness.recipes.catalog import recipe_id
from harness.recipes.compare import pair_difference

FORMAT = 1


def record_path(baselines_dir: Path, model: str, recipe: str) -> Path:
    return Path(baselines_dir) / model / "recipes" / f"{recipe}.json"


def make_record(ctx, recipe, overall, prepared, scores) -> dict:
    """The record of a run that scored every dataset (its gate ran): ``ctx`` the run's context
    (harness/session/context.py), ``recipe`` None for an existing checkpoint (recorded as it is), ``overall`` its
    overall Comparison, ``prepared`` and ``scores`` the prepare and score stages' results."""
    datasets = {}
    for n in prepared.names:
        s = scores[n]
        datasets[n] = {"fingerprint": prepared[n].fingerprint, "tokens": int(sum(s.n_tokens)),
                       "doc_nll_sums": [float(x) for x in s.nll_sums], "doc_tokens": [int(t) for t in s.n_tokens]}
    o = overall
    return {"format": FORMAT, "model": ctx.cfg.name, "recipe": ctx.recipe_name,
            "recipe_sha256": recipe and recipe_id(recipe.recipe_text),
            "scheme": recipe and recipe.scheme, "checkpoint": ctx.existing or None,
            "score": o.score, "low": o.interval.low if o.interval else None,
            "high": o.interval.high if o.interval else None, "backend": ctx.backend,
            "kernel": scores.engine.get("kernel"), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "datasets": datasets}


def write_record(baselines_dir: Path, rec: dict) -> Path:
    path = record_path(baselines_dir, rec["model"], rec["recipe"])
    atomic_write_text(path, json.dumps(rec, indent=1) + "\n")
    return path


def load_record(baselines_dir: Path, model: str, recipe: str, hint: str) -> dict:
    """The stored record, or a BaselineError that says how to make it."""
    path = record_path(baselines_dir, model, recipe)
    if not path.exists():
        raise BaselineError(f"no stored result of recipe '{recipe}' for {model} ({path}); recipe_regression compares "
                            f"every recipe with it: create it with: {hint}")
    try:
        rec = json.loads(path.read_text())
        ok = rec.get("format") == FORMAT and all(
            len(d["doc_nll_sums"]) == len(d["doc_tokens"]) for d in rec["datasets"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BaselineError(f"{path} is not a recipe record this harness can read (format {FORMAT}); re-create it "
                            f"with: {hint}")
    return rec


def check(best: dict, current: dict, ref: dict, fingerprints: dict[str, str], margin: float, samples: int,
          confidence: float, seed: int) -> dict:
    """``current`` and ``ref`` (BF16): dataset -> (per-document NLL sums, token counts) of this run; ``fingerprints``:
    this run's data. Returns the paired difference score(now) - score(best) with its interval, and ``passed``."""
    for n, fp in fingerprints.items():
        d = best["datasets"].get(n)
        if d is None or d["fingerprint"] != fp:
            was = "no such dataset" if d is None else f"fingerprint {d['fingerprint']}"
            raise BaselineError(f"the stored result of recipe '{best['recipe']}' was measured on other {n} data "
                                f"({was}; now {fp}): record it again on this data (--record-recipe)")
    stored = {n: (best["datasets"][n]["doc_nll_sums"], best["datasets"][n]["doc_tokens"]) for n in fingerprints}
    for n in fingerprints:
        if list(stored[n][1]) != list(current[n][1]):
            raise BaselineError(f"the stored result of recipe '{best['recipe']}' scored other {n} documents (token "
                                "counts differ): record it again on this data (--record-recipe)")
    d = pair_difference(ref, current, stored, samples, confidence, seed)
    return {**d, "best": best["recipe"], "best_score": best["score"], "margin": margin, "passed": d["high"] >= -margin}


def message(recipe: str, r: dict) -> str:
    verdict = "not worse than" if r["passed"] else "WORSE than"
    return (f"recipe {recipe} is {verdict} the stored best recipe {r['best']} (score {r['best_score']:.2f}): "
            f"score difference {r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] "
            f"({r['confidence']:.0%} paired bootstrap, same documents; margin {r['margin']:g})")


def record_hint(cfg, recipe: str) -> str:
    src = cfg.source_path or "configs/tiny.yaml"
    return (f"harness gate --config {src} --recipe {recipe} --record-recipe   (or: pytest --harness-config {src} "
            f"--recipe {recipe} --record-recipe)")


def regression(cfg, ref: dict, scores, prepared) -> dict:
    """The config's recipe_regression for a run that scored every dataset: ``ref`` the BF16 baselines' documents
    (compare.bf16_documents), ``scores`` and ``prepared`` the score and prepare stages' results."""
    spec = cfg.recipe_regression
    best = load_record(cfg.path_of("baselines_dir"), cfg.name, spec.best, record_hint(cfg, spec.best))
    fps = {n: prepared[n].fingerprint for n in prepared.names}
    t = cfg.thresholds
    return check(best, scores.documents, ref, fps, spec.margin, t.bootstrap_samples, t.confidence, t.seed)


@dataclass
class RegressionOutcome:
    """The recipe regression as one line of the verdict."""

    recipe: str
    result: dict

    @property
    def passed(self) -> bool:
        return self.result["passed"]

    def message(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'} {message(self.recipe, self.result)}"
