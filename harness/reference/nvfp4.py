"""An independent NVFP4 reference, written from the format's definition (numpy only; no torch, no llm-compressor,
no compressed-tensors), to check what the quantizer wrote and what the engines compute.

The format (NVIDIA's NVFP4; OCP Microscaling for the element type):

- **elements** are FP4 E2M1: sign, 2 exponent bits (bias 1), 1 mantissa bit; the magnitudes are exactly
  {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Conversion rounds to nearest, ties to the value with an even mantissa bit
  (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), and saturates at 6;
- **blocks** of 16 consecutive elements along the last (input) dimension share one scale, stored as FP8 E4M3
  (sign, 4 exponent bits with bias 7, 3 mantissa bits; largest 448; no infinities; 0x7F / 0xFF are NaN), rounded to
  nearest-even and saturated at 448;
- one FP32 **global scale** per tensor, g = 448 x 6 / amax(tensor), makes the largest block scale land at 448.
  Tensors that a kernel fuses (q/k/v, gate/up) share one: the amax is taken over the group;
- quantize: s_b = E4M3(amax_b / 6 x g); q = E2M1(x / (s_b / g)); dequantize: x^ = q x s_b / g.
  A block scale of 0 (an all-zero block) stores 0 here; any code times 0 is 0 either way.
- **storage** (compressed-tensors ``nvfp4-pack-quantized``): ``weight_packed`` uint8 [out, in/2], two codes a byte,
  the even element in the low nibble; a code is sign << 3 | magnitude index; ``weight_scale`` E4M3 [out, in/16];
  ``weight_global_scale`` FP32 [1]; ``input_global_scale`` FP32 [1] for the activations of W4A4 schemes, whose
  block scales are computed per token at run time (dynamic) by the same rule.

Arithmetic here is float64 unless a step says otherwise; where an implementation computes a step in float32 or
bf16, its results can differ from these in the last place, which the tests that use this module state and bound.
"""
from __future__ import annotations

import numpy as np

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_MAX = 6.0
E4M3_MAX = 448.0
BLOCK = 16
# the Linears whose NVFP4 global scale llm-compressor fuses (vLLM serves them as one fused layer): a module that holds
# every name of a group as an attribute has that group fused. llm-compressor 0.14's observers/helpers.py
# FUSED_LAYER_NAMES (tests/test_sensitivity.py checks this copy against it where llm-compressor is installed).
FUSED_GROUPS = (("gate_proj", "up_proj"), ("q_proj", "k_proj", "v_proj"), ("q_a_proj", "kv_a_proj_with_mqa"),
                ("w1", "w3"))


# ---- the element and scale types -------------------------------------------------------------------------------------
def e4m3_table() -> np.ndarray:
    """The value of each of the 256 E4M3 bit patterns (NaN for 0x7F and 0xFF), from the definition."""
    out = np.empty(256)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        exp, man = (b >> 3) & 0xF, b & 0x7
        if exp == 0xF and man == 0x7:
            out[b] = np.nan
        elif exp == 0:
            out[b] = sign * (man / 8) * 2.0 ** (1 - 7)          # subnormal
        else:
            out[b] = sign * (1 + man / 8) * 2.0 ** (exp - 7)
    return out


_E4M3 = e4m3_table()
_E4M3_POS = np.unique(_E4M3[:128][~np.isnan(_E4M3[:128])])  # 0 .. 448, ascending; index = bit pattern
E4M3_POSITIVE = tuple(float(v) for v in _E4M3_POS)


def decode_e4m3(raw: np.ndarray) -> np.ndarray:
    return _E4M3[np.asarray(raw, dtype=np.uint8)]


def round_e4m3(x) -> np.ndarray:
    """Nearest E4M3 value, ties to even mantissa, saturating at +-448 (x finite)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.searchsorted(_E4M3_POS, a, side="left").clip(1, len(_E4M3_POS) - 1)
    lo = hi - 1
    vlo, vhi = _E4M3_POS[lo], _E4M3_POS[hi]
    dlo, dhi = a - vlo, vhi - a
    # E4M3's positive values are in bit-pattern order, so the index parity is the mantissa's last bit
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0))
    v = np.where(pick_hi, vhi, vlo)
    v = np.where(a == vhi, vhi, v)
    return np.copysign(v, x)


def e2m1_codes(x) -> np.ndarray:
    """4-bit codes (sign << 3 | index into E2M1) of the nearest E2M1 values, ties to even mantissa, saturating at 6
    (x not NaN)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    # the index is the number of decision boundaries between consecutive magnitudes that a lies above; at a tie it
    # goes to the even mantissa bit: 0.75 -> 1.0, 1.75 -> 2.0, 3.5 -> 4.0 up, the others down (one pass per boundary:
    # 7x faster than a search over 106M weights, 2026-11-30)
    idx = np.zeros(a.shape, dtype=np.uint8)
    for bound, tie_up in _E2M1_BOUNDS:
        idx += (a >= bound) if tie_up else (a > bound)
    return idx | (np.signbit(x).astype(np.uint8) << 3)


_E2M1_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))
_E2M1_BY_CODE = np.concatenate([E2M1, -E2M1])  # code -> value; code 8 is -0.0


def e2m1_values(codes) -> np.ndarray:
    return _E2M1_BY_CODE[np.asarray(codes, dtype=np.uint8)]


# ---- quantize / dequantize ------------------------------------------------------------------------------------------
ARITHMETIC = ("exact", "torch-bf16")
"""How intermediate values are rounded. ``exact``: the definition, float64 throughout (the FP32 global scale in
float32). ``torch-bf16``: what compressed-tensors computes for a bf16 model with torch (llm-compressor 0.14 /
compressed-tensors 0.19, read off their arithmetic and confirmed bit for bit on a real checkpoint): the global
scale 448 x 6 / amax on a bf16 tensor, which torch evaluates as reciprocal then multiply, each rounded to bf16; the
block amax / 6 rounded to bf16 before the float32 product with the global scale; x / (s / g) in float32."""


def global_scale(amax: float, arithmetic: str = "exact") -> np.float32:
    """The FP32 global scale 448 x 6 / amax."""
    a = np.float32(max(float(amax), np.finfo(np.float32).tiny))
    if arithmetic == "torch-bf16":
        return np.float32(round_bf16(round_bf16(np.float32(1.0) / a) * np.float32(E4M3_MAX * E2M1_MAX)))
    _check(arithmetic)
    return np.float32(E4M3_MAX * E2M1_MAX) / a


def _check(arithmetic: str) -> None:
    if arithmetic not in ARITHMETIC:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; known: {', '.join(ARITHMETIC)}")


def round_bf16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32: add 0x7FFF plus the kept
    part's last bit to the bit pattern, then clear the low 16 bits (in place on one uint32 copy: 7x faster than
    through uint64; a finite value's sum never passes 2^32)."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32)
    r = (b >> 16) & np.uint32(1)
    r += np.uint32(0x7FFF)
    r += b
    r &= np.uint32(0xFFFF0000)
    return r.view(np.float32)


def block_amax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of the block size {BLOCK}")
    return np.abs(x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)).max(-1)


def block_scales(x: np.ndarray, g: float, arithmetic: str = "exact") -> np.ndarray:
    """E4M3(amax_b / 6 x g) for each block of 16 along the last dimension (as float64 values)."""
    amax = block_amax(x)
    if arithmetic == "torch-bf16":
        return round_e4m3(np.float32(g) * round_bf16(amax.astype(np.float32) * np.float32(1 / 6)))
    _check(arithmetic)
    return round_e4m3(amax / E2M1_MAX * float(g))


def quantize(x: np.ndarray, g: float, arithmetic: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """(codes [..., n], block scales as E4M3 values [..., n/16]) of ``x`` under global scale ``g``."""
    x = np.asarray(x, dtype=np.float64)
    s = block_scales(x, g, arithmetic)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    with np.errstate(divide="ignore", invalid="ignore"):
        if arithmetic == "torch-bf16":
            step = (s.astype(np.float32) / np.float32(g)).astype(np.float32)
            scaled = np.where(step[..., None] > 0, blocks.astype(np.float32) / step[..., None], 0.0)
        else:
            step = s / float(g)
            scaled = np.where(step[..., None] > 0, blocks / step[..., None], 0.0)
    return e2m1_codes(scaled).reshape(x.shape), s


def dequantize(codes: np.ndarray, scales: np.ndarray, g: float) -> np.ndarray:
    v = e2m1_values(codes)
    blocks = v.reshape(*v.shape[:-1], v.shape[-1] // BLOCK, BLOCK)
    return (blocks * (np.asarray(scales, dtype=np.float64) / float(g))[..., None]).reshape(v.shape)


def fake_quantize(x: np.ndarray, g: float) -> np.ndarray:
    """x^ = dequantize(quantize(x)): what a W4A4 kernel feeds its matrix product for activations ``x`` [tokens, n]."""
    return dequantize(*quantize(x, g), g)


def unpack(packed: np.ndarray) -> np.ndarray:
    """``weight_packed`` [out, in/2] -> codes [out, in] (low nibble first)."""
    p = np.asarray(packed, dtype=np.uint8)
    return np.stack((p & 0x0F, p >> 4), axis=-1).reshape(p.shape[0], p.shape[1] * 2)


def fused_group(module: str, names) -> list[str]:
    """The modules that share ``module``'s global scale: its whole fused group where its parent holds every member
    (llm-compressor's rule), else itself alone."""
    parent, _, leaf = module.rpartition(".")
    for group in FUSED_GROUPS:
        if leaf in group:
            members = [f"{parent}.{m}" if parent else m for m in group]
            return members if all(m in names for m in members) else [module]
    return [module]
