"""Writing a synthetic checkpoint (harness/models/synth.py says what it holds) and the BF16 view of an NVFP4 one: into a
temp dir beside OUT, renamed into place, so a failed run leaves nothing."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from harness.atomic import atomic_dir
from harness.checkpoint import VIEW_FILE, checkpoint_quantization
from harness.errors import HarnessError
from harness.models.synth import (SYNTH_FILE, SynthSpec, modelopt_quant_config, nbytes, quantization_config,
                                  synth_tensors, tensor_plan)
from harness.tiny import builtin_path


def write_checkpoint(spec: SynthSpec, out: Path, *, tokenizer: str | None = None, shard_gb: float = 5.0,
                     device: str = "auto", force: bool = False, progress: bool = True) -> dict:
    """Write the synthetic checkpoint to ``out`` (atomically); returns what was written."""
    import torch
    from safetensors.torch import save_file

    if spec.precision not in ("nvfp4", "bf16"):
        raise HarnessError(f"precision {spec.precision!r}: choose nvfp4 or bf16")
    if spec.layout not in ("compressed-tensors", "modelopt") or (spec.layout == "modelopt" and spec.precision != "nvfp4"):
        raise HarnessError(f"layout {spec.layout!r}: choose compressed-tensors, or modelopt with precision nvfp4")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    plan = tensor_plan(spec.config, spec.ignore)
    total = nbytes(plan, spec.precision)
    out = Path(out)
    _check_output(out, total, force)
    t0 = time.time()
    shards: list[list[str]] = []
    current: dict = {}
    size = 0
    with atomic_dir(out, prefix=".", on_exists="replace") as tmp:  # a replaced one goes once the new one is there
        def flush() -> None:
            nonlocal current, size
            if current:
                save_file(current, tmp / f"shard-{len(shards):05d}.safetensors", metadata={"format": "pt"})
                shards.append(list(current))
                current, size = {}, 0

        with tqdm(total=total, unit="B", unit_scale=True, desc=f"synth {spec.precision} {out.name}",
                  disable=not progress, mininterval=2.0) as bar:
            global_scales: dict = {}
            for p in plan:
                for name, t in synth_tensors(p, spec, dev, plan, global_scales).items():
                    current[name] = t.contiguous().cpu()
                    b = t.numel() * t.element_size()
                    size += b
                    bar.update(b)
                if size >= shard_gb * 2**30:
                    flush()
            flush()
        _name_shards(tmp, shards)
        cfg = {**spec.config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}
        if spec.precision == "nvfp4" and spec.layout == "modelopt":
            (tmp / "hf_quant_config.json").write_text(json.dumps(modelopt_quant_config(spec), indent=1) + "\n")
        elif spec.precision == "nvfp4":
            cfg["quantization_config"] = quantization_config(spec)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        tok = _save_tokenizer(tokenizer, tmp)
        info = {"synthetic": True, **{k: v for k, v in asdict(spec).items() if k != "config"},
                "tensors": sum(len(s) for s in shards), "shards": len(shards), "bytes": total,
                "params": sum(_numel(p.shape) for p in plan), "tokenizer": tok, "device": str(dev),
                "seconds": round(time.time() - t0, 1)}
        (tmp / SYNTH_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return {"path": str(out), **info}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_output(out: Path, need_bytes: int, force: bool) -> None:
    if out.exists() and not force:
        raise HarnessError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < need_bytes + (256 << 20):
        raise HarnessError(f"{out}: needs {need_bytes / 2**30:.1f} GiB, {out.parent} has {free / 2**30:.1f} GiB free; "
                           "write it elsewhere (a bigger disk, or /dev/shm when RAM allows)")


def _name_shards(tmp: Path, shards: list[list[str]]) -> None:
    n = len(shards)
    if n == 1:
        os.rename(tmp / "shard-00000.safetensors", tmp / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.rename(tmp / f"shard-{i:05d}.safetensors", tmp / final)
        weight_map.update({k: final for k in names})
    total = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")


def _save_tokenizer(tokenizer: str | None, out: Path) -> str:
    """Copy a tokenizer in (default: the embedded tiny model's; scoring uses token ids, any ids < vocab do)."""
    from transformers import AutoTokenizer


    src = tokenizer or str(builtin_path("tiny"))
    try:
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    except (OSError, ValueError) as e:
        raise HarnessError(f"--tokenizer {src!r}: cannot load it ({str(e)[:200]})") from None
    return "builtin:tiny" if tokenizer is None else tokenizer


# ---- BF16 view of an NVFP4 checkpoint (written here; read by harness.checkpoint) ----------------------------------
def write_dequant_view(nvfp4_dir: Path, out: Path, force: bool = False) -> dict:
    """A BF16 model dir whose weights are ``nvfp4_dir``'s dequantization (config + tokenizer + a pointer, no weights)."""
    nvfp4_dir = Path(nvfp4_dir).resolve()
    cfg = json.loads((nvfp4_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    q = checkpoint_quantization(nvfp4_dir)
    if q.get("scheme") != "NVFP4" or q.get("format") not in ("nvfp4-pack-quantized", "modelopt"):
        raise HarnessError(f"{nvfp4_dir}: not an NVFP4 checkpoint in the compressed-tensors or ModelOpt layout "
                           f"(quant_method={q.get('quant_method')!r}, format={q.get('format')!r})")
    out = Path(out)
    _check_output(out, 1 << 20, force)
    with atomic_dir(out, prefix=".", on_exists="replace") as tmp:
        (tmp / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16", "torch_dtype": "bfloat16"},
                                                    indent=1) + "\n")
        for f in nvfp4_dir.iterdir():
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template"))
                                or f.name == "generation_config.json"):
                shutil.copy2(f, tmp / f.name)
        view = {"kind": "nvfp4-dequantized", "source": os.path.relpath(nvfp4_dir, out.resolve().parent / out.name),
                "note": "BF16 weights = dequantization of source; vLLM: load_format harness_dequant (set by the "
                        "harness's vllm backend); hf: dequantized in memory"}
        (tmp / VIEW_FILE).write_text(json.dumps(view, indent=1) + "\n")
    return {"path": str(out), **view}
