"""The gate session's judging (a part of harness.session.gate.GateSession): comparisons with the baselines, next-token
distribution statistics, thresholds and limits, the recipe regression, and the verdict."""
from __future__ import annotations

from pathlib import Path

from harness.stages.judge import (Outcome, Verdict, baseline_notes, dataset_comparison, judge, overall_comparison,
                                  run_notes, sizing_notes, threshold_source)
from harness.metrics import Comparison


class JudgingSteps:
    # ---- comparison ---------------------------------------------------------
    def comparison(self, name: str) -> Comparison:
        if name not in self._comparisons:  # scores and baselines are fixed once computed: bootstrap once
            with self.clock("judging"):
                self._comparisons[name] = self._compare(name)
        return self._comparisons[name]

    def _compare(self, name: str) -> Comparison:
        return dataset_comparison(name, self.baseline(name), self.score(name), self.cfg.thresholds)

    def overall(self) -> Comparison:
        if None not in self._comparisons:
            with self.clock("judging"):
                self._comparisons[None] = self._compare_overall()
        return self._comparisons[None]

    def _compare_overall(self) -> Comparison:
        names = self.dataset_names
        return overall_comparison({n: self.baseline(n) for n in names}, {n: self.score(n) for n in names},
                                  self.cfg.thresholds)

    def token_summary(self, name: str) -> dict | None:
        """BF16-vs-quantized per-token summary, when both sides have per-token logprobs."""
        s = self.score(name)
        if s.token_logprobs is None:
            return None
        bf16 = self.store.tokens_path(self.cfg.name, name)
        if not bf16.exists():
            return {"note": f"no BF16 per-token file {bf16}: run a baseline update with token_detail on"}
        from harness.token_detail import load_tokens, summarize, to_arrays

        return summarize(load_tokens(bf16), to_arrays(s.token_logprobs))

    # ---- next-token distributions ------------------------------------------
    def token_metrics(self, name: str):
        """Per-token KL, top-1 agreement and Δp of the quantized run against the stored BF16 distributions."""
        if name not in self._token_metrics:
            from harness.distributions import load
            from harness.divergence import token_metrics

            b = self.baseline(name)
            ref = load(self.store.distributions_path(b), b.distributions, self.update_hint)
            self._token_metrics[name] = token_metrics(ref, self.score(name).topk)
        return self._token_metrics[name]

    def distribution_stats(self, name: str | None) -> dict | None:
        """divergence.describe of one dataset (``None``: all datasets pooled); None with distributions off."""
        if not self.top_k:
            return None
        if name not in self._distribution_stats:
            from harness.divergence import describe

            t = self.cfg.thresholds
            names = self.dataset_names if name is None else [name]
            with self.clock("judging"):
                self._distribution_stats[name] = describe({n: self.token_metrics(n) for n in names},
                                                          samples=t.bootstrap_samples, confidence=t.confidence,
                                                          seed=t.seed)
        return self._distribution_stats[name]

    def limit_outcomes(self, name: str | None) -> list:
        """The distribution limits (kld_mean_max, top1_min) that apply, judged for a dataset or (``None``) overall."""
        from harness.stages.judge import judge_limit, limit_source
        from harness.limits import LIMITS

        stats = self.distribution_stats(name)
        if stats is None:
            return []
        rt = {} if self.existing else self.recipe().thresholds
        out = []
        for key in LIMITS:
            limit, source = limit_source(key, self.cfg.thresholds, rt, self.recipe_name)
            if limit is not None:
                out.append(judge_limit(name or "overall", stats, key, limit, source, self.cfg.thresholds.use))
        return out

    def threshold(self, name: str | None) -> float:
        return self.threshold_source(name)[0]

    def threshold_source(self, name: str | None) -> tuple[float, str]:
        """The minimum score for a dataset (``None``: overall) and where it came from (judge.threshold_source)."""
        rt = {} if self.existing else self.recipe().thresholds
        return threshold_source(name, self.cfg.thresholds, rt, self.min_score, self.recipe_name)

    def outcome(self, name: str | None) -> Outcome:
        c = self.overall() if name is None else self.comparison(name)
        return judge(c, *self.threshold_source(name), self.cfg.thresholds.use)

    def recipe_record(self) -> Path | None:
        """With record_recipe, once every dataset is scored: this run's recipe result, written (once) where
        recipe_regression reads it."""
        if self.record_recipe and self._recipe_record is None and all(self.scored(n) for n in self.dataset_names):
            from harness.recipes import records as recipe_records

            self._recipe_record = recipe_records.write_record(self.cfg.path_of("baselines_dir"),
                                                              recipe_records.make_record(self))
            self.log(f"recipe result stored: {self._recipe_record}")
        return self._recipe_record

    def recipe_regression(self) -> dict | None:
        """This recipe against the stored result of the config's best recipe (None when not configured)."""
        if self.cfg.recipe_regression is not None and self._regression is None:
            from harness.recipes import records as recipe_records

            self.recipe_record()  # recording the best recipe itself: it is checked against what this run measured
            with self.clock("judging"):
                self._regression = recipe_records.regression(self)
        return self._regression

    def sizing_notes(self) -> list[str]:
        """Scores whose threshold asks for a smaller drop than this run can detect (judge.sizing_notes)."""
        names = [*self.dataset_names, None]
        return sizing_notes({n: self.overall() if n is None else self.comparison(n) for n in names},
                            {n: self.threshold(n) for n in names})

    def verdict(self) -> Verdict:
        with self.clock("judging"):
            return self._verdict()

    def _verdict(self) -> Verdict:
        outs = [self.outcome(n) for n in self.dataset_names] + [self.outcome(None)]
        outs += [o for n in [*self.dataset_names, None] for o in self.limit_outcomes(n)]
        outs += self.task_outcomes()
        if self.cfg.recipe_regression is not None:
            from harness.recipes.records import RegressionOutcome

            outs.append(RegressionOutcome(self.recipe_name, self.recipe_regression()))
        mine = self.engine_info("nvfp4")
        baselines = {n: self.store.load(self.cfg.name, n) for n in self.dataset_names}
        return Verdict(outs, [*self.notes, *run_notes(mine), *self.sizing_notes(),
                              *baseline_notes(baselines, mine, self.backend)])
