"""`harness sensitivity`: run harness/sensitivity/measure.py on a config's model and texts, print the ranking and write it
(sensitivity.json, sensitivity.md, chart.svg) into a report folder of its own, whole or not at all."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from harness.atomic import atomic_write_text
from harness.errors import HarnessError
from harness.precision import BF16
from harness.recipes.catalog import load_recipe
from harness.report.cells import md_table
from harness.report.folder import save_svg, write_report_folder
from harness.sensitivity import measure as S


def docs_of(session, texts: int, max_tokens: int) -> list[list[int]]:
    """The first ``texts`` prepared texts of each of the config's datasets (the gate's own data rules), each cut to
    ``max_tokens``."""
    out = []
    for n in session.dataset_names:
        out += [list(d[:max_tokens]) for d in session.prepared(n).token_ids[:texts]]
    return out


def to_dict(sens, suggestion: dict | None, meta: dict) -> dict:
    return {**meta, "by": sens.by, "mode": sens.mode, "scheme": sens.scheme, "texts": sens.texts,
            "tokens": sens.tokens, "bf16_ppl": sens.bf16_ppl, "all_quantized": asdict(sens.all_quantized),
            "ranking": [{"rank": i, "unit": u.name, "linears": len(u.linears), "params": u.params,
                         "layer": u.index, **asdict(m)} for i, (u, m) in enumerate(sens.ranked(), 1)],
            "depth_order": [u.name for u, _ in sens.rows],
            "suggestion": suggestion}


def table(rep: dict) -> str:
    what = "quantized alone" if rep["mode"] == "only" else "everything else quantized"
    rows = [[r["rank"], r["unit"], f"{r['kld_mean']:.4f}", f"{r['top1_pct']:.1f}", f"{r['score']:.2f}",
             f"{r['params'] / 1e6:.2f}", f"{r['seconds']:.1f}"] for r in rep["ranking"]]
    return md_table(["rank", f"unit ({what})", "KL mean", "top-1 %", "score", "params (M)", "s"], rows, "rlrrrrr")


def render_markdown(rep: dict) -> str:
    a = rep["all_quantized"]
    lines = [f"# Sensitivity: {rep['model']} ({rep['scheme']}, by {rep['by']}, mode {rep['mode']})", "",
             f"- {rep['texts']} texts, {rep['tokens']} scored tokens; BF16 PPL {rep['bf16_ppl']:.4f}",
             f"- everything quantized: score {a['score']:.2f}, KL mean {a['kld_mean']:.4f}, top-1 {a['top1_pct']:.1f}%",
             f"- {rep['seconds_per_variant']:.1f} s per variant on {rep['device']}, computed in {rep['dtype']} "
             f"(BF16 pass and load {rep['setup_s']:.1f} s)", "", table(rep), "", "![KL by unit](chart.svg)", ""]
    s = rep.get("suggestion")
    if s:
        head = (f"Leave {', '.join(s['units'])} in BF16" if s["units"] else "Nothing needs to stay in BF16") + \
            (f": score {s['score']:.2f} (target {s['target']:.2f}, measured)" if s["reached"] else
             f": target {s['target']:.2f} not reached (best measured {s['score']:.2f})")
        lines += ["## Suggested ignore list", "", head + f"; costs {s['extra_bytes'] / 2**20:.1f} MiB more than "
                  "NVFP4.", "", "```yaml", "ignore: " + json.dumps(["lm_head", *s["ignore"]]), "```", ""]
    return "\n".join(lines)


def write_chart(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    by_name = {r["unit"]: r for r in rep["ranking"]}
    names = rep["depth_order"]
    kept = set((rep.get("suggestion") or {}).get("units") or [])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 3.6))
    colors = ["#dd8452" if n in kept else "#4c72b0" for n in names]
    ax.bar(range(len(names)), [by_name[n]["kld_mean"] for n in names], color=colors)
    if kept:  # the legend names the suggested units' colour
        ax.bar([0], [0], color="#dd8452", label="suggested: left in BF16")
    ax.axhline(rep["all_quantized"]["kld_mean"], color="black", linestyle="dashed", linewidth=1,
               label=f"everything quantized (KL {rep['all_quantized']['kld_mean']:.4f})")
    ax.legend(fontsize=7, frameon=False)
    ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8
                  else "center", fontsize=8)
    ax.set_ylabel("KL mean (nats)")
    ax.set_title(f"{rep['model']}: KL against BF16, {rep['by']} "
                 f"{'quantized alone' if rep['mode'] == 'only' else 'left in BF16'}", fontsize=10)
    save_svg(fig, path)


def write(rep: dict, reports_dir: Path) -> Path:
    return write_report_folder(reports_dir, rep["model"], f"sensitivity-{rep['by']}", rep, "sensitivity",
                               render_markdown, write_chart)


def new_recipe_path(cfg, name: str) -> Path:
    """Where --write-recipe NAME goes; a HarnessError if a recipe of that name is already in the project."""
    path = cfg.path_of("recipes_dir") / f"{name}.yaml"
    if path.exists():
        raise HarnessError(f"{path} exists: choose another --write-recipe name (or remove it first)")
    return path


def write_suggested_recipe(cfg, scheme: str, name: str, rep: dict) -> Path:
    """The suggestion as a recipe of the project (``<recipes_dir>/<name>.yaml``, not default): the shipped recipe of
    the same scheme with the suggested units added to its ignore list, so `harness gate --recipe NAME` checks it
    through llm-compressor and the engine. A recipe of that name already in the project is not overwritten."""
    s = rep["suggestion"]
    path = new_recipe_path(cfg, name)  # checked again: the ranking took minutes
    base = load_recipe(cfg.path_of("recipes_dir"), scheme)
    text = yaml.safe_load(base.recipe_text)
    try:
        mod = text["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    except (KeyError, TypeError):
        raise HarnessError(f"recipe {scheme}: no quant_stage.quant_modifiers.QuantizationModifier to add the "
                           "ignore list to; write the recipe by hand from the report's ignore line") from None
    mod["ignore"] = list(dict.fromkeys([*(mod.get("ignore") or []), *s["ignore"]]))
    out = {"name": name, "default": False, "scheme": base.scheme,
           "description": (f"{scheme} with {', '.join(s['units']) or 'nothing'} left in BF16: the suggestion of "
                           f"`harness sensitivity --by {rep['by']} --mode {rep['mode']}` on {rep['model']} "
                           f"({rep['created']}), measured there at score {s['score']:.2f} (target "
                           f"{s['target']:.2f}{'' if s['reached'] else ', not reached'}) on {rep['texts']} texts; "
                           f"{s['extra_bytes'] / 2**20:.1f} MiB more than {scheme}"),
           "recipe": yaml.safe_dump(text, sort_keys=False),
           "calibration": base.calibration.model_dump(), "models": [rep["model"]]}
    atomic_write_text(path, yaml.safe_dump(out, sort_keys=False))
    load_recipe(cfg.path_of("recipes_dir"), name)  # it reads back as a recipe
    return path


def compute_dtype(cfg, asked: str) -> str:
    """The dtype the probe computes in, set on the config's BF16 hf engine: ``auto`` is float32 on a CPU, whatever the
    gate's engine uses (bf16 matrix products on CPUs without bf16 units are ~5x slower: 17.6 s vs 3.8 s a variant on
    SmolLM2-135M, 2 cores), and the config's own (bf16) on a GPU. The weights and their NVFP4 values are the same
    numbers in either; the ranking is of NVFP4's harm, not of bf16 rounding."""
    kw = cfg.model.engine.setdefault(BF16, {}).setdefault("hf", {})
    if asked == "auto":
        import torch

        if torch.cuda.is_available() and kw.get("device", "cuda") != "cpu":
            return kw.get("dtype", "bfloat16")
        asked = "float32"
    kw["dtype"] = asked
    return asked


def cmd_sensitivity(a, session) -> int:
    t0 = time.time()
    cfg = session.cfg
    if a.write_recipe:
        new_recipe_path(cfg, a.write_recipe)  # refused before the work, not after it
    dtype = compute_dtype(cfg, a.dtype)
    docs = docs_of(session, a.texts, a.max_tokens)
    session.start_engine(BF16)
    backend = session.engines.current
    top_k = a.top_k or (cfg.distributions.top_k if cfg.distributions else 20)
    probe = S.Probe(backend, docs, top_k, scheme=a.scheme, log=session.log)
    setup_s = time.time() - t0
    sens = S.run(probe, by=a.by, mode=a.mode)
    target = a.target if a.target is not None else session.threshold(None)[0]
    suggestion = None if a.no_suggest else S.suggest(probe, sens, target, a.max_units)
    variants = [m for _, m in sens.rows]
    rep = to_dict(sens, suggestion, {"model": cfg.name, "config": cfg.source_path, "model_path": cfg.model.path,
                                     "device": backend.info().get("device"), "top_k": top_k, "dtype": dtype,
                                     "setup_s": round(setup_s, 1),
                                     "seconds_per_variant": sum(m.seconds for m in variants) / max(len(variants), 1),
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print("\n" + table(rep) + "\n")
    out = write(rep, Path(a.report_dir) if a.report_dir else cfg.path_of("reports_dir"))
    print(render_markdown(rep).split("## Suggested ignore list")[-1].strip() if suggestion else "")
    print(f"\nreport: {out}/sensitivity.md")
    if a.write_recipe:
        path = write_suggested_recipe(cfg, a.scheme, a.write_recipe, rep)
        print(f"recipe written: {path}\ncheck it through llm-compressor and the engine: harness gate"
              f"{' --config ' + cfg.source_path if cfg.source_path else ''} --recipe {a.write_recipe}")
    return 0, suggestion, rep


def verified_line(name: str, suggestion: dict, rep: dict, done) -> str:
    """The written recipe's gate (harness.stages.run.run_gate's result) beside what the sensitivity run predicted for it."""
    o = done.report["overall"]
    lo, hi = (o["interval"]["low"], o["interval"]["high"]) if o.get("interval") else (o["score"], o["score"])
    inside = "inside" if lo <= suggestion["score"] <= hi else "outside"
    return (f"suggestion {name}: predicted {suggestion['score']:.2f} ({rep['texts']} texts, in process); gated "
            f"{o['score']:.2f} [{lo:.2f}, {hi:.2f}] ({inside} the gate's interval), "
            f"{'GATE PASSED' if done.verdict.passed else 'GATE FAILED'}; report: {done.folder}/report.md")
