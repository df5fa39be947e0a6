"""The plugin's state for one pytest run: the configs, the (model, recipe) cases and their gate sessions, made lazily."""
from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError


class Case:
    """One gate run: a config (model) and a recipe; tests are parametrized over every case x dataset."""

    def __init__(self, cfg, recipe: str):
        self.cfg, self.recipe = cfg, recipe

    @property
    def id(self) -> str:
        return f"{self.cfg.name}/{self.recipe}"

    def __repr__(self) -> str:
        return f"Case({self.id})"


class HarnessState:
    """Per-run state: the loaded configs, the gate cases and their sessions, created lazily."""

    def __init__(self, pytest_config):
        self.pytest_config = pytest_config
        self._configs = None
        self._cases = None
        self.sessions: dict[tuple, object] = {}
        self.updated: set[str] = set()
        self.reports: list[str] = []
        self.verdicts: list[str] = []
        self.internal_errors: list[str] = []  # bugs met in gate tests: the run then exits 3, like the CLI

    def opt(self, name):
        return self.pytest_config.getoption(name)

    @property
    def configs(self) -> list:
        if self._configs is None:
            from harness.config.load import load_config

            self._configs = [load_config(p) for p in (self.opt("harness_config") or [None])]
        return self._configs

    @property
    def cfg(self):
        return self.configs[0]

    def cases(self) -> list[Case]:
        """--recipe, else the config's `recipes` list, else every default recipe that applies to the model."""
        if self._cases is None:
            from harness.recipes.catalog import default_recipes

            from harness.session.gate import EXISTING

            self._cases = []
            for cfg in self.configs:
                if cfg.model.checkpoint:  # an existing checkpoint is gated as it is: no recipes
                    self._cases.append(Case(cfg, EXISTING))
                    continue
                names = ([self.opt("recipe")] if self.opt("recipe") else
                         cfg.recipes if cfg.recipes is not None else default_recipes(cfg.path_of("recipes_dir"), cfg.name))
                self._cases += [Case(cfg, r) for r in names]
        return self._cases

    def session(self, case: Case | None = None, backend: str | None = None):
        from harness.session.gate import GateSession

        case = case or Case(self.cfg, self.opt("recipe") or self.cfg.recipe)
        backend = backend or self.opt("backend") or case.cfg.backend
        key = (case.cfg.source_path, case.recipe, backend)
        if key not in self.sessions:
            update = self.opt("update_baselines") and case.cfg.source_path not in self.updated
            if update:  # baselines are per model: one BF16 update serves every recipe
                self.updated.add(case.cfg.source_path)
            self.sessions[key] = GateSession(
                case.cfg, backend=backend, min_score=self.opt("min_score"), update_baselines=update,
                force=self.opt("harness_force"), recipe=case.recipe, quant_python=self.opt("quant_python"),
                quant_pythonpath=self.opt("quant_pythonpath"), batch_size=self.opt("batch_size"),
                token_detail=self.opt("token_detail"), record_recipe=self.opt("record_recipe"))
            from harness.timings import Busy

            self.sessions[key].busy = Busy()  # its wall time: its preflight, its tests and its report, not the run's
        return self.sessions[key]

    def finish(self, session) -> None:
        """Write the report if the session got as far as scoring every dataset; always close its engine."""
        try:
            with session.busy:  # every session of the plugin has one (session() above)
                self._finish(session)
        except HarnessError as e:
            self.verdicts.append(f"[{session.cfg.name}/{session.recipe_name}] no report: {e}")
        finally:
            session.close()

    def _finish(self, session) -> None:
        from harness.stages.run import finish

        if session.baseline_updates:
            from harness.report.build import update_rows
            from harness.report.sections import baseline_diff_table

            table = baseline_diff_table(update_rows(session.baseline_updates))
            self.verdicts.append(f"[{session.cfg.name}] baselines updated (old -> new, * = changed):\n{table}")
        if not all(session.scored(n) for n in session.dataset_names):
            return
        done = finish(session, Path(self.opt("harness_report_dir") or session.cfg.path_of("reports_dir")))
        self.reports.append(str(done.folder))
        said = f"\nrecipe result stored: {done.recipe_record}" if done.recipe_record else ""
        self.verdicts.append(f"[{session.cfg.name}/{session.recipe_name}] {done.verdict.summary()}\n"
                             f"{done.time_line}{said}")
