"""The gate session's baselines and model identity (a part of harness.session.gate.GateSession): load and check a stored
BF16 baseline against this run's data and model, update it (score BF16, write atomically), and check that a
checkpoint is of the model the baselines were made from."""
from __future__ import annotations

import time
from pathlib import Path

from harness.baselines import Baseline, baseline_from_score, check_data_matches
from harness.data.rules import PreparedDataset
from harness.errors import BaselineError, HarnessError
from harness.metrics import DatasetScore


class BaselineSteps:
    # ---- model identity ------------------------------------------------------
    def model_identity(self) -> dict:
        """Which BF16 model this config names: local content, or hub id + resolved commit (computed once)."""
        if self._identity is None:
            from harness.models import identity

            m = self.cfg.model
            self._identity = identity.model_identity(self.source.location, m.revision, named=m.path)
            if self._identity["kind"] == "hub" and not self._identity["pinned"]:
                got = self._identity["resolved"]
                self.log(f"warning: model.revision is not pinned: {m.path}@{m.revision or 'main'} "
                         + (f"resolved to {got}" if got else f"is {self._identity['resolved_by']}")
                         + "; pin model.revision to a commit sha for a reproducible gate")
        return self._identity

    def check_identity(self, b: Baseline) -> None:
        """Refuse a baseline scored on another model (content, commit, architecture) or in another dtype."""
        from harness.models import identity

        where = self.store.path(self.cfg.name, b.dataset)
        theirs = b.provenance.get("model_identity")
        if not theirs:
            self._note_once(f"{b.dataset}: baseline records no model identity (made before it was recorded); "
                            f"rebuild it to pin the model: {self.update_hint}")
            return
        dtype_c = self.cfg.engine_kwargs("bf16", b.provenance.get("backend") or self.backend).get("dtype")
        why = identity.baseline_mismatches(theirs, self.model_identity(), b.provenance.get("dtype"), dtype_c)
        if why:
            raise BaselineError(f"{where}: scored on another model than this config's ({'; '.join(why)}).\n"
                                f"  baseline: {identity.describe(theirs)}\n  config:   "
                                f"{identity.describe(self.model_identity())}\n  rebuild it with: {self.update_hint}")

    def _check_checkpoint_architecture(self, path: str) -> None:
        """An existing checkpoint must be a quantization of this config's model (and of the baselines' model)."""
        from harness.models import identity

        if not Path(path).is_dir():
            return  # a hub id: its config.json is read by the engine
        sources = [("model.path " + self.cfg.model.path, self.model_identity())]
        for n in self.dataset_names:
            if self.store.exists(self.cfg.name, n):
                try:
                    ident = self.store.load(self.cfg.name, n).provenance.get("model_identity")
                except BaselineError:
                    continue
                if ident:
                    sources.append((f"the baseline's model ({n})", ident))
        bad = identity.checkpoint_mismatch(Path(path), sources)
        if bad:
            what, why = bad
            raise HarnessError(f"model.checkpoint {self.existing} is not a quantization of {what}: "
                               f"{'; '.join(why)} (theirs vs the checkpoint's config.json). Point model.checkpoint "
                               "at a checkpoint of this model, or model.path at its BF16 model.")

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
            self.log(f"note: {note}")

    # ---- baselines ----------------------------------------------------------
    def baseline(self, name: str) -> Baseline:
        if self.update_mode and not self._updated:
            self.update_baselines()
        b = self.store.load(self.cfg.name, name)
        check_data_matches(b, self.prepared(name), where=f"{self.store.path(self.cfg.name, name)}")
        self.check_stored(b)
        return b

    def check_stored(self, b: Baseline) -> None:
        """What a baseline is checked for besides its data: the model it was scored on and its distributions."""
        self.check_identity(b)
        self._check_distributions(b)

    def _check_distributions(self, b: Baseline) -> None:
        """With distributions on, the baseline must carry BF16's top-k at this config's k (distributions.check_stored)."""
        if self.top_k:
            from harness.distributions import check_stored

            check_stored(b, self.top_k, self.store.path(self.cfg.name, b.dataset), self.store.distributions_path,
                         self.update_hint)

    def update_baselines(self, names: list[str] | None = None) -> list[tuple[Baseline | None, Baseline]]:
        """Score BF16 on every dataset with one engine, then write all baselines (refusing fingerprint changes)."""
        names = names or self.dataset_names
        olds = {n: self._old_baseline(n) for n in names}  # a changed fingerprint is refused before any scoring
        self.check_task_updates()
        new: list[Baseline] = []
        for n in names:
            prep = self.prepared(n)
            s = self.score(n, "bf16")
            new.append(self.make_baseline(n, prep, s))
        self.update_task_baselines()  # the same BF16 engine: every task's items, written beside the datasets'
        self.engines.close()
        pairs = [(olds[b.dataset], b) for b in new]
        for _, b in pairs:
            topk = self._scores[(b.dataset, "bf16")].topk
            if topk is not None:  # the distributions file first: the baseline written next records its sha256
                from harness.distributions import SUFFIX, save

                b.distributions = save(self.store.own_path(b.model, b.dataset, SUFFIX), topk)
                self.log(f"wrote BF16 top-{topk.k} distributions {b.distributions['file']} "
                         f"({b.distributions['bytes'] / 2**20:.1f} MiB, {topk.tokens} tokens)")
            p = self.store.write(b)
            self.log(f"wrote baseline {p}")
            tok = self._scores[(b.dataset, "bf16")].token_logprobs
            if tok is not None:
                from harness.token_detail import save_tokens

                save_tokens(self.store.own_path(b.model, b.dataset, ".tokens.npz"), tok)
        self.baseline_updates = pairs
        self._updated = True
        return pairs

    def _old_baseline(self, name: str) -> Baseline | None:
        """The stored baseline an update replaces; a different data fingerprint needs --force."""
        if not self.store.exists(self.cfg.name, name):
            return None
        try:
            old = self.store.load(self.cfg.name, name)
        except BaselineError as e:
            self.log(f"replacing unreadable baseline: {e}")
            return None
        fp = self.prepared(name).fingerprint
        if old.fingerprint != fp and not self.force:
            raise BaselineError(
                f"{self.store.path(self.cfg.name, name)}: data fingerprint changed {old.fingerprint} -> {fp} "
                "(tokenizer, dataset revision or rules differ); nothing was scored or written. Re-run with --force "
                "to accept the new data.")
        return old

    def make_baseline(self, name: str, prep: PreparedDataset, s: DatasetScore) -> Baseline:
        prov = provenance(self.engine_info("bf16"), self.backend, self.cfg.model, self.model_identity(),
                          git_commit(self.cfg.root), s.eval_s)
        return baseline_from_score(self.cfg.name, name, prep, s, prov)


def provenance(info: dict, backend: str, model, identity: dict, commit: str | None, eval_s: float | None) -> dict:
    """What a BF16 baseline records of how it was scored: the engine (``info``), the model as configured and its
    identity, the date and the commit."""
    return {"backend": backend, "device": info.get("device"), "versions": info.get("versions", {}),
            "dtype": info.get("dtype"), "kernel": info.get("kernel"), "max_model_len": model.max_model_len,
            "engine_kwargs": info.get("engine_kwargs"), "engine_start_s": info.get("engine_start_s"),
            "compilation": info.get("compilation"), "cpu_matmul": info.get("cpu_matmul"),
            "engine_start": info.get("engine_start"), "offload": _offload_summary(info.get("offload")),
            "model_path": model.path, "revision": model.revision, "model_identity": identity,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": commit, "eval_s": round(eval_s or 0, 3)}


def _offload_summary(offload: dict | None) -> dict | None:
    """The offload facts worth keeping in a baseline's provenance (it changes speed, not numbers)."""
    if not offload:
        return None
    return {"requested": offload.get("requested"), "offloader": offload.get("offloader"),
            "offloaded_gib": offload.get("offloaded_gib")}


def git_commit(root: str | None) -> str | None:
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root or ".", capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
