"""The gate's baseline steps, plain functions of the run's context (harness/session/context.py) and stage results:
load and check a stored BF16 baseline against this run's data and model, write updated ones (atomically), and check
that a checkpoint is of the model the baselines were made from."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness.baselines import Baseline, baseline_from_score, check_data_matches
from harness.data.rules import PreparedDataset
from harness.distributions import SUFFIX, check_stored as check_distributions, save
from harness.errors import BaselineError, HarnessError
from harness.metrics import DatasetScore
from harness.models import identity
from harness.precision import BF16
from harness.session.context import RunContext
from harness.stages.results import Prepared, Scores
from harness.token_detail import save_tokens


def check_identity(ctx: RunContext, b: Baseline) -> None:
    """Refuse a baseline scored on another model (content, commit, architecture) or in another dtype."""
    where = ctx.store.path(ctx.cfg.name, b.dataset)
    theirs = b.provenance.get("model_identity")
    if not theirs:
        ctx.note_once(f"{b.dataset}: baseline records no model identity (made before it was recorded); "
                      f"rebuild it to pin the model: {ctx.update_hint}")
        return
    dtype_c = ctx.cfg.engine_kwargs(BF16, b.provenance.get("backend") or ctx.backend).get("dtype")
    why = identity.baseline_mismatches(theirs, ctx.identity, b.provenance.get("dtype"), dtype_c)
    if why:
        raise BaselineError(f"{where}: scored on another model than this config's ({'; '.join(why)}).\n"
                            f"  baseline: {identity.describe(theirs)}\n  config:   "
                            f"{identity.describe(ctx.identity)}\n  rebuild it with: {ctx.update_hint}")


def check_checkpoint_architecture(ctx: RunContext, path: str) -> None:
    """An existing checkpoint must be a quantization of this config's model (and of the baselines' model)."""
    if not Path(path).is_dir():
        return  # a hub id: its config.json is read by the engine
    sources = [("model.path " + ctx.cfg.model.path, ctx.identity)]
    for n in ctx.datasets:
        if ctx.store.exists(ctx.cfg.name, n):
            try:
                ident = ctx.store.load(ctx.cfg.name, n).provenance.get("model_identity")
            except BaselineError:
                continue
            if ident:
                sources.append((f"the baseline's model ({n})", ident))
    bad = identity.checkpoint_mismatch(Path(path), sources)
    if bad:
        what, why = bad
        raise HarnessError(f"model.checkpoint {ctx.existing} is not a quantization of {what}: "
                           f"{'; '.join(why)} (theirs vs the checkpoint's config.json). Point model.checkpoint "
                           "at a checkpoint of this model, or model.path at its BF16 model.")


def load_checked(ctx: RunContext, name: str, prep: PreparedDataset) -> Baseline:
    """The stored baseline of a dataset, checked against this run's data, model and distributions."""
    b = ctx.store.load(ctx.cfg.name, name)
    check_data_matches(b, prep, where=f"{ctx.store.path(ctx.cfg.name, name)}")
    check_stored(ctx, b)
    return b


def check_stored(ctx: RunContext, b: Baseline) -> None:
    """What a baseline is checked for besides its data: the model it was scored on and, with distributions on,
    BF16's top-k at this config's k (distributions.check_stored)."""
    check_identity(ctx, b)
    if ctx.top_k:
        check_distributions(b, ctx.top_k, ctx.store.path(ctx.cfg.name, b.dataset), ctx.store.distributions_path,
                            ctx.update_hint)


def old_baseline(ctx: RunContext, name: str, prep: PreparedDataset) -> Baseline | None:
    """The stored baseline an update replaces; a different data fingerprint needs --force."""
    if not ctx.store.exists(ctx.cfg.name, name):
        return None
    try:
        old = ctx.store.load(ctx.cfg.name, name)
    except BaselineError as e:
        ctx.log(f"replacing unreadable baseline: {e}")
        return None
    if old.fingerprint != prep.fingerprint and not ctx.force:
        raise BaselineError(
            f"{ctx.store.path(ctx.cfg.name, name)}: data fingerprint changed {old.fingerprint} -> {prep.fingerprint} "
            "(tokenizer, dataset revision or rules differ); nothing was scored or written. Re-run with --force "
            "to accept the new data.")
    return old


def write_updates(ctx: RunContext, olds: dict, prepared: Prepared,
                  bf16: Scores) -> list[tuple[Baseline | None, Baseline]]:
    """Every dataset's new baseline from its BF16 score, written (distributions and per-token files first, each
    atomically); returns (old, new) pairs."""
    pairs = []
    for n, s in bf16.datasets.items():
        b = make_baseline(ctx, n, prepared[n], s, bf16.engine)
        if s.topk is not None:  # the distributions file first: the baseline written next records its sha256
            b.distributions = save(ctx.store.own_path(b.model, b.dataset, SUFFIX), s.topk)
            ctx.log(f"wrote BF16 top-{s.topk.k} distributions {b.distributions['file']} "
                    f"({b.distributions['bytes'] / 2**20:.1f} MiB, {s.topk.tokens} tokens)")
        ctx.log(f"wrote baseline {ctx.store.write(b)}")
        if s.token_logprobs is not None:
            save_tokens(ctx.store.own_path(b.model, b.dataset, ".tokens.npz"), s.token_logprobs)
        pairs.append((olds[n], b))
    return pairs


def make_baseline(ctx: RunContext, name: str, prep: PreparedDataset, s: DatasetScore, info: dict) -> Baseline:
    prov = provenance(info, ctx.backend, ctx.cfg.model, ctx.identity, git_commit(ctx.cfg.root), s.eval_s)
    return baseline_from_score(ctx.cfg.name, name, prep, s, prov)


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
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root or ".", capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
