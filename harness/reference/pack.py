"""NVFP4 in compressed-tensors' packed layout, in torch: quantize a weight to (packed FP4 codes, FP8 block scales,
FP32 global scale) and back. The synthetic checkpoints are written with it (harness/models/synth.py) and BF16 views and the
hf backend read with it (harness/checkpoint.py). The format's independent numpy reference, against which tests hold
this and llm-compressor, is harness/reference/nvfp4.py."""
from __future__ import annotations

FP4_MAX, FP8_MAX = 6.0, 448.0
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)          # magnitudes of the 8 positive FP4 E2M1 codes
E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)     # midpoints between them: round to nearest
NVFP4_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_global_scale", ".input_global_scale")
MODELOPT_SUFFIXES = (".weight_scale_2", ".input_scale")
GROUP = 16


def quantize_nvfp4(w, global_scale=None):
    """NVFP4 of a 2-D weight [out, in]: (packed uint8 [out, in/2], FP8 scales [out, in/16], FP32 global scale [1]).
    The global scale is 448 x 6 / amax unless given (a fused group's shared one)."""
    import torch

    out_f, in_f = w.shape
    w = w.float()
    if global_scale is None:
        global_scale = FP8_MAX * FP4_MAX / w.abs().amax().clamp(min=torch.finfo(torch.float32).tiny)
    global_scale = global_scale.float().reshape(1).clone()  # its own storage: safetensors refuses shared tensors
    groups = w.view(out_f, in_f // GROUP, GROUP)
    scale = (groups.abs().amax(-1) / FP4_MAX * global_scale).clamp(max=FP8_MAX).to(torch.float8_e4m3fn)
    step = scale.float() / global_scale
    step = torch.where(step == 0, torch.ones_like(step), step)
    x = groups / step.unsqueeze(-1)
    bounds = torch.tensor(E2M1_BOUNDS, device=w.device)
    codes = torch.bucketize(x.abs(), bounds, out_int32=True) | (torch.signbit(x).to(torch.int32) << 3)
    codes = codes.view(out_f, in_f).to(torch.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.contiguous(), scale, global_scale.float()


def dequantize_nvfp4(packed, scale, global_scale, dtype=None):
    """Inverse of :func:`quantize_nvfp4` (the values compressed-tensors and vLLM read from the same bytes)."""
    import torch

    dtype = dtype or torch.bfloat16
    out_f, half = packed.shape
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1).view(out_f, 2 * half).int()
    lut = torch.tensor(E2M1 + tuple(-v for v in E2M1), dtype=torch.float32, device=packed.device)
    step = scale.float() / global_scale.float().reshape(1, 1)
    w = lut[codes].view(out_f, 2 * half // GROUP, GROUP) * step.unsqueeze(-1)
    return w.view(out_f, 2 * half).to(dtype)
