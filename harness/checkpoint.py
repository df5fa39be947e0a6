"""Checkpoint inspection without torch: quantization scheme, disk size, shard completeness."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from harness.errors import HarnessError
from harness.reference.pack import MODELOPT_SUFFIXES, NVFP4_SUFFIXES, dequantize_nvfp4

VIEW_FILE = "harness_view.json"


def describe_quantization(qc: dict) -> dict:
    """Condense a compressed-tensors ``quantization_config`` into the facts the gate and report need."""
    groups = qc.get("config_groups") or {}
    weights = acts = None
    for g in groups.values():
        weights = weights or g.get("weights")
        acts = acts or g.get("input_activations")
    out = {"quant_method": qc.get("quant_method"), "format": qc.get("format"), "ignore": qc.get("ignore", [])}
    if weights:
        out.update(weight_bits=weights.get("num_bits"), weight_type=weights.get("type"),
                   weight_strategy=weights.get("strategy"), group_size=weights.get("group_size"))
    out["activation_bits"] = acts.get("num_bits") if acts else None
    out["scheme"] = scheme_name(out)
    return out


def scheme_name(d: dict) -> str:
    if d.get("weight_bits") == 4 and d.get("weight_type") == "float" and d.get("group_size") == 16:
        return "NVFP4" if d.get("activation_bits") == 4 else "NVFP4A16"
    if d.get("weight_bits"):
        a = d.get("activation_bits")
        return f"W{d['weight_bits']}A{a if a else 16}-{d.get('weight_type')}-{d.get('weight_strategy')}"
    return "unknown"


SCHEME_LABEL = re.compile(r"^W(\d+)A(\d+)-(\w+)-(\w+)$")
VLLM_INT_BITS = (4, 8)  # vLLM 0.26 runs int weights of these widths (WNA16: Marlin and friends), per channel or group


def vllm_refusal(scheme: str | None) -> str | None:
    """Why vLLM 0.26 cannot run a checkpoint of this scheme label (None: it can, or the label is not one we parse).
    Measured: int2 per tensor (``W2A16-int-tensor``) fails at engine start with "No compressed-tensors compatible
    scheme was found"."""
    m = SCHEME_LABEL.match(scheme or "")
    if not m:
        return None
    wbits, abits, wtype, strategy = int(m[1]), int(m[2]), m[3], m[4]
    if wtype == "int" and abits == 16:
        if wbits not in VLLM_INT_BITS:
            return f"vLLM runs {' and '.join(map(str, VLLM_INT_BITS))}-bit int weights, not {wbits}-bit"
        if strategy not in ("channel", "group"):
            return f"vLLM runs int weights with one scale per channel or group, not per {strategy}"
    return None


def read_config(path: Path) -> dict:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise HarnessError(f"{path}: no config.json; is this a Hugging Face checkpoint dir?")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise HarnessError(f"{cfg}: unreadable JSON ({e})") from None


def checkpoint_quantization(path: Path) -> dict:
    """The checkpoint's own account of its quantization: config.json's quantization_config (compressed-tensors, or
    ModelOpt's newer layout), else ModelOpt's hf_quant_config.json beside it."""
    qc = read_config(path).get("quantization_config")
    if not qc and (Path(path) / "hf_quant_config.json").is_file():
        qc = json.loads((Path(path) / "hf_quant_config.json").read_text())
    if not qc:
        return {}
    if qc.get("quant_method") == "modelopt" or "quantization" in qc or qc.get("producer", {}).get("name") == "modelopt":
        return describe_modelopt(qc)
    return describe_quantization(qc)


def describe_modelopt(qc: dict) -> dict:
    """ModelOpt's config (``{"quantization": {"quant_algo": ...}}`` or ``{"quant_method": "modelopt", ...}``)."""
    q = qc.get("quantization") or qc
    algo = str(q.get("quant_algo") or "").upper()
    out = {"quant_method": "modelopt", "format": "modelopt", "quant_algo": algo,
           "ignore": q.get("exclude_modules", q.get("ignore", [])), "group_size": q.get("group_size")}
    if algo == "NVFP4":  # FP4 E2M1 weights and activations, FP8 scales per 16
        out.update(weight_bits=4, weight_type="float", weight_strategy="tensor_group", activation_bits=4,
                   group_size=q.get("group_size") or 16)
    out["scheme"] = scheme_name(out) if algo == "NVFP4" else (algo or "unknown")
    return out


def check_shards(path: Path) -> None:
    """Every shard named in the safetensors index must exist, else loading fails much later and obscurely."""
    path = Path(path)
    src = view_source(path)
    if src is not None:  # a BF16 view: its weights are its NVFP4 source's
        return check_shards(src)
    idx = path / "model.safetensors.index.json"
    if idx.exists():
        names = set(json.loads(idx.read_text()).get("weight_map", {}).values())
        missing = sorted(n for n in names if not (path / n).exists())
        if missing:
            raise HarnessError(f"{path}: missing shard file(s) {missing} named in {idx.name}; re-download or re-quantize")
    elif not list(path.glob("*.safetensors")) and not list(path.glob("*.bin")):
        raise HarnessError(f"{path}: no weight files (*.safetensors / *.bin)")


def require_scheme(path: Path, expected: str) -> dict:
    """Refuse a 'quantized' checkpoint whose scheme is not the one the recipe promised."""
    q = checkpoint_quantization(path)
    got = q.get("scheme", "none (not quantized)") if q else "none (no quantization_config)"
    if q.get("quant_method") != "compressed-tensors" or got != expected:
        raise HarnessError(f"{path}: expected a compressed-tensors {expected} checkpoint, found {got} "
                           f"(quant_method={q.get('quant_method')!r}); check the recipe's scheme")
    return q


def disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def existing_checkpoint(path: str) -> dict:
    """Facts about a quantized checkpoint the user already has (``model.checkpoint``): it is gated as it is."""
    p = Path(path)
    if not p.is_dir():  # a hub id: vLLM fetches it; nothing to check before the engine starts
        return {"existing": True, "scheme": None, "source": "hub"}
    check_shards(p)
    q = checkpoint_quantization(p)
    if not q:
        raise HarnessError(f"model.checkpoint {path}: no quantization_config in its config.json and no "
                           "hf_quant_config.json; give the quantized checkpoint (compressed-tensors or ModelOpt), or "
                           "drop model.checkpoint to quantize model.path")
    if q.get("quant_method") not in ("compressed-tensors", "modelopt"):
        raise HarnessError(f"model.checkpoint {path}: quant_method {q.get('quant_method')!r}; the gate takes "
                           "compressed-tensors (llm-compressor) and NVIDIA ModelOpt checkpoints")
    return {"existing": True, "scheme": q.get("scheme"), "layout": q.get("format"), "quantization": q, "source": "local"}


# ---- BF16 views of NVFP4 checkpoints (written by harness/models/synth.py) ----------------------------------------------
def view_source(model_dir) -> Path | None:
    """The NVFP4 checkpoint a BF16 view dequantizes, or None when ``model_dir`` is not a view."""
    f = Path(model_dir) / VIEW_FILE
    if not f.is_file():
        return None
    src = (Path(model_dir) / json.loads(f.read_text())["source"]).resolve()
    if not (src / "config.json").is_file():
        raise HarnessError(f"{model_dir} is a BF16 view of {src}, which is missing; re-create the view with "
                           "harness synth-checkpoint --bf16-view")
    return src


def dequantized_weights(src: Path, device="cpu") -> Iterator[tuple[str, object]]:
    """(name, tensor) of ``src`` as a dense model: NVFP4 modules dequantized to BF16, the rest as stored."""
    from safetensors import safe_open


    src = Path(src)
    idx = src / "model.safetensors.index.json"
    if idx.is_file():
        weight_map = json.loads(idx.read_text())["weight_map"]
    else:
        files = sorted(src.glob("*.safetensors"))
        weight_map = {}
        for f in files:
            with safe_open(f, "pt") as fh:
                weight_map.update({k: f.name for k in fh.keys()})
    handles: dict = {}

    def get(name: str):
        f = weight_map[name]
        if f not in handles:
            handles[f] = safe_open(src / f, "pt")
        return handles[f].get_tensor(name).to(device)

    for name in weight_map:
        mod = name.rpartition(".")[0]
        if name.endswith(".weight_zero_point"):
            raise HarnessError(f"{src}: {name}: asymmetric NVFP4 is not supported by the dequantized view")
        if name.endswith(".weight_packed"):  # compressed-tensors
            yield f"{mod}.weight", dequantize_nvfp4(get(name), get(f"{mod}.weight_scale"),
                                                     get(f"{mod}.weight_global_scale"))
        elif name.endswith(".weight") and f"{mod}.weight_scale_2" in weight_map:  # ModelOpt: scale_2 = 1 / global
            yield name, dequantize_nvfp4(get(name), get(f"{mod}.weight_scale"), 1.0 / get(f"{mod}.weight_scale_2"))
        elif not name.endswith(NVFP4_SUFFIXES + MODELOPT_SUFFIXES):
            yield name, get(name)
