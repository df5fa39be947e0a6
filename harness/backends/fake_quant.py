"""NVFP4 activation fake quantization in torch, for the reference model of harness/reference/nvfp4.py on the hf backend.

A model folder with ``harness_oracle.json`` naming input global scales is a W4A4 reference: each of those Linears
gets a forward pre-hook that quantizes its input as the format defines (blocks of 16 along the hidden dimension per
token, E4M3 block scales from the block amax and the Linear's input global scale, E2M1 elements, ties to even) and
dequantizes it again, in float64, before the bf16 matrix product. ``tests/test_nvfp4_ref.py`` checks this against
the numpy reference bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

from harness.reference.pack import E2M1, E2M1_BOUNDS

E2M1_TIE_UP = (False, True, False, True, False, True, False)  # a tie rounds to the value with an even mantissa bit


def e4m3_round(x):
    """Nearest E4M3 value (ties to the even mantissa, saturating at 448) of a float64 tensor, rounded from float64 in
    one step (torch's float8 cast goes through float32 first, which can round twice)."""
    import torch

    from harness.reference.nvfp4 import E4M3_POSITIVE

    pos = torch.tensor(E4M3_POSITIVE, dtype=torch.float64, device=x.device)
    a = x.abs().clamp(max=448.0)
    hi = torch.bucketize(a, pos, right=False).clamp(1, len(E4M3_POSITIVE) - 1)
    lo = hi - 1
    d_lo, d_hi = a - pos[lo], pos[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))  # index parity = the mantissa's last bit
    return torch.copysign(torch.where(pick_hi, pos[hi], pos[lo]), x)


def e2m1_round(x):
    import torch

    a = x.abs()
    bounds = torch.tensor(E2M1_BOUNDS, dtype=torch.float64, device=x.device)
    idx = torch.bucketize(a, bounds, right=False)  # a <= bounds[i] -> i
    safe = idx.clamp(max=len(E2M1_BOUNDS) - 1)
    tie = (a == bounds[safe]) & torch.tensor(E2M1_TIE_UP, device=x.device)[safe]
    idx = idx + tie.long()
    vals = torch.tensor(E2M1, dtype=torch.float64, device=x.device)[idx]
    return torch.where(torch.signbit(x), -vals, vals)


def fake_quantize(x, g: float, arithmetic: str = "exact"):
    """x^ for activations ``x`` [..., n] (n a multiple of 16) under input global scale ``g``; same dtype as x.
    ``arithmetic`` as in harness.reference.nvfp4: ``exact`` (float64), or ``torch-bf16`` (block amax / 6 rounded to bf16,
    the rest in float32, as compressed-tensors computes it for a bf16 model)."""
    import torch

    shape, dtype = x.shape, x.dtype
    if arithmetic == "torch-bf16":
        b32 = x.to(torch.float32).reshape(*shape[:-1], shape[-1] // 16, 16)
        third = (b32.abs().amax(-1) * torch.tensor(1 / 6, dtype=torch.float32)).to(torch.bfloat16).to(torch.float32)
        s = e4m3_round((third * torch.tensor(g, dtype=torch.float32)).to(torch.float64))
        step = (s.to(torch.float32) / torch.tensor(g, dtype=torch.float32)).unsqueeze(-1)
        b = b32
    else:
        b = x.to(torch.float64).reshape(*shape[:-1], shape[-1] // 16, 16)
        s = e4m3_round(b.abs().amax(-1) / 6.0 * g)
        step = (s / g).unsqueeze(-1)
    q = torch.where(step > 0, e2m1_round((b / torch.where(step > 0, step, torch.ones_like(step))).to(torch.float64)),
                    torch.zeros(b.shape, dtype=torch.float64, device=b.device))
    return (q * step.to(torch.float64)).reshape(shape).to(dtype)


def reference_activations(model_dir) -> tuple[dict[str, float], str] | None:
    """(module name -> input global scale, arithmetic) of a W4A4 reference model folder; None for any other."""
    f = Path(model_dir) / "harness_oracle.json"
    if not f.is_file():
        return None
    rec = json.loads(f.read_text())
    act = rec.get("activations")
    return (dict(act["input_global_scale"]), rec.get("arithmetic", "exact")) if act else None


def attach(model, scales: dict[str, float], arithmetic: str = "exact") -> int:
    """Register the activation fake quantization on each named Linear of ``model``; returns how many."""
    modules = dict(model.named_modules())
    missing = sorted(set(scales) - set(modules))
    if missing:
        raise ValueError(f"reference model names Linears the loaded model lacks: {missing[:3]}")
    for name, g in scales.items():
        modules[name].register_forward_pre_hook(
            lambda mod, args, g=g: (fake_quantize(args[0], g, arithmetic), *args[1:]))
    return len(scales)
