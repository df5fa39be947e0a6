"""Checkpoints read and written without torch, for the NVFP4 reference (harness/reference/nvfp4.py): safetensors files
read as numpy, a layer's stored NVFP4 checked against the reference, and a BF16 model that carries the reference's
NVFP4 weights (the oracle the engines are compared with)."""
from __future__ import annotations

import json
import os
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from harness.reference.nvfp4 import (ARITHMETIC, decode_e4m3, dequantize, fused_group, global_scale, quantize,
                                     round_bf16, unpack)

# ---- reading checkpoints without torch ------------------------------------------------------------------------------
_DTYPES = {"BF16": (np.uint16, "bf16"), "F32": (np.float32, None), "F16": (np.float16, None), "U8": (np.uint8, None),
           "F8_E4M3": (np.uint8, "e4m3"), "I32": (np.int32, None), "I64": (np.int64, None)}


class SafetensorsFile:
    """Tensors of one ``.safetensors`` file as numpy, read from its header and bytes (BF16 widened exactly to
    float32, FP8 E4M3 decoded by the table above)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            self.header = json.loads(f.read(n))
        self.offset = 8 + n
        self.meta = self.header.pop("__metadata__", None)

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        h = self.header[name]
        if h["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: {name} has dtype {h['dtype']}, which this reader does not decode")
        np_dtype, special = _DTYPES[h["dtype"]]
        start, end = h["data_offsets"]
        raw = np.fromfile(self.path, dtype=np.uint8, count=end - start, offset=self.offset + start)
        a = raw.view(np_dtype).reshape(h["shape"]) if raw.size else np.zeros(h["shape"], dtype=np_dtype)
        if special == "bf16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if special == "e4m3":
            return decode_e4m3(a)
        return a


def open_checkpoint(folder: Path) -> dict[str, SafetensorsFile]:
    """tensor name -> the file holding it, over every ``*.safetensors`` file of a checkpoint folder."""
    out: dict[str, SafetensorsFile] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        st = SafetensorsFile(f)
        for k in st.keys():
            out[k] = st
    if not out:
        raise FileNotFoundError(f"{folder}: no .safetensors files")
    return out


def fused_amax(src, modules) -> dict[str, float]:
    """Each module's amax over its fused group (what its global scale is computed from): ``src`` an
    :func:`open_checkpoint` of the BF16 model, ``modules`` the quantized Linears' names (without ``.weight``)."""
    modules = sorted(modules)
    own = dict(zip(modules, each(lambda m: float(np.abs(src[f"{m}.weight"].get(f"{m}.weight")).max()), modules)))
    return {m: max(own[g] for g in fused_group(m, own)) for m in modules}


def check_layer(w: np.ndarray, packed: np.ndarray, scale: np.ndarray, g_stored: float, group_amax: float) -> dict:
    """Compare one quantized Linear of a checkpoint with the reference built from its BF16 weight ``w``.

    ``group_amax``: the amax over the Linear's fused group; ``g_stored``: the checkpoint's global scale. For each
    arithmetic: whether the stored global scale is the one it gives, and, rebuilt under the stored global scale, how
    many block scales and codes differ from the checkpoint's. For the definition (``exact``) also the quantization
    error of both against ``w`` (RMS, relative to ``w``'s RMS), which says what the checkpoint's deviation costs."""
    codes = unpack(packed)
    s_ck = np.asarray(scale, dtype=np.float64)
    deq_ck = dequantize(codes, s_ck, g_stored)
    w64 = np.asarray(w, dtype=np.float64)
    rms = float(np.sqrt(np.mean(w64 ** 2))) or 1.0
    out = {"elements": int(codes.size), "blocks": int(s_ck.size), "global_scale": float(g_stored),
           "error_rms_checkpoint": float(np.sqrt(np.mean((deq_ck - w64) ** 2))) / rms}
    for arithmetic in ARITHMETIC:
        codes_ref, s_ref = quantize(w64, g_stored, arithmetic)
        out[arithmetic] = {"global_scale": float(global_scale(group_amax, arithmetic)),
                           "global_scale_matches": bool(np.float32(g_stored) == global_scale(group_amax, arithmetic)),
                           "scale_mismatches": int((s_ck != s_ref).sum()),
                           "code_mismatches": int((codes != codes_ref).sum())}
        if arithmetic == "exact":
            deq_ref = dequantize(codes_ref, s_ref, g_stored)
            out["error_rms_definition"] = float(np.sqrt(np.mean((deq_ref - w64) ** 2))) / rms
    return out


def each(fn, items) -> list:
    """``[fn(x) for x in items]``, in order, on one thread per CPU core: numpy releases the GIL inside its array
    operations, so layers are quantized side by side (1.8x on 2 cores for SmolLM2's 210 Linears)."""
    items = list(items)
    if len(items) < 2 or (os.cpu_count() or 1) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(fn, items))


# ---- a BF16 model that carries the reference's NVFP4 weights --------------------------------------------------------
ORACLE_FILE = "harness_oracle.json"


def quantized_weight_names(names) -> list[str]:
    """The weights NVFP4 recipes quantize: every Linear of the decoder layers (``*_proj.weight`` under ``layers.``);
    not the embedding, the norms or lm_head."""
    return sorted(n for n in names if ".layers." in n and n.endswith("_proj.weight"))


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file of BF16 tensors (float32 arrays rounded to bf16, ties to even), written without torch."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        raw = (round_bf16(a).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def write_reference_model(bf16_dir: Path, out: Path, activations_from: Path | None = None,
                          arithmetic: str = "exact") -> dict:
    """A BF16 checkpoint in ``out`` whose decoder Linear weights are this module's NVFP4 quantize-dequantize of
    ``bf16_dir``'s (in ``arithmetic``, fused groups sharing the global scale); everything else is copied.

    ``activations_from``: a W4A4 checkpoint whose ``input_global_scale`` of each Linear (set by calibration, which
    this reference does not redo) is recorded in ``harness_oracle.json``: the hf backend then fake-quantizes each
    Linear's input with them (harness/backends/fake_quant.py). Without it the model is weight-only (W4A16)."""
    bf16_dir, out = Path(bf16_dir), Path(out)
    src = open_checkpoint(bf16_dir)
    names = set(src)
    weights = quantized_weight_names(names)
    modules = {w[: -len(".weight")] for w in weights}
    amax = fused_amax(src, modules)

    def reference(n: str) -> np.ndarray:
        a = src[n].get(n)
        if n in weights:
            g = global_scale(amax[n[: -len(".weight")]], arithmetic)
            a = dequantize(*quantize(a, g, arithmetic), g).astype(np.float32)
        return np.asarray(a, dtype=np.float32)

    tensors = dict(zip(sorted(names), each(reference, sorted(names))))
    out.mkdir(parents=True, exist_ok=True)
    for f in bf16_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and not f.name.startswith((".", "harness_")) \
                and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    write_bf16_safetensors(out / "model.safetensors", tensors)
    record = {"reference": "harness.reference.nvfp4", "arithmetic": arithmetic, "source": str(bf16_dir),
              "weights": len(weights), "activations": None}
    if activations_from is not None:
        ck = open_checkpoint(Path(activations_from))
        scales = {m: float(ck[f"{m}.input_global_scale"].get(f"{m}.input_global_scale").reshape(-1)[0])
                  for m in sorted(modules) if f"{m}.input_global_scale" in ck}
        if len(scales) != len(modules):
            raise ValueError(f"{activations_from}: input_global_scale for {len(scales)} of {len(modules)} Linears; "
                             "is it a W4A4 (NVFP4) checkpoint of this model?")
        record["activations"] = {"input_global_scale": scales, "source": str(activations_from)}
    (out / ORACLE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record
