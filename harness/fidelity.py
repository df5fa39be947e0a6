"""Which NVFP4 numerics a gate measures, and saying so. No torch import.

An NVFP4 (W4A4) checkpoint quantizes weights *and* activations. GPUs with FP4 tensor cores (Blackwell, compute
capability 10.0 and up) run it as written. On others vLLM 0.26 picks Marlin W4A16 by default: FP4 weights, 16-bit
activations, so the activations' share of the harm goes unmeasured. On real weights (SmolLM2-135M, one H200) that
share is large: Marlin W4A16 scored ~78, the same checkpoint under W4A4 emulation ~63 (docs/results).

``fidelity`` (config, default ``scheme``):

- ``scheme``: measure the checkpoint's scheme as written. For a W4A4 checkpoint on a GPU without FP4 units the vLLM
  engine starts with ``linear_backend: emulation`` (W4A4 numerics in higher precision; at the 72B shape it was also
  the faster of the two on an H200). This is what the checkpoint does where NVFP4 is meant to run.
- ``this-gpu``: measure what vLLM serves on this GPU (Marlin W4A16 on Hopper): the number for deploying this
  checkpoint on this GPU, not the checkpoint's W4A4 quality.

A ``linear_backend`` in the config's engine settings wins over both. The verdict and the report say what was
measured and what the other choice would measure.
"""
from __future__ import annotations

from harness.errors import HarnessError, unknown_name

FIDELITIES = ("scheme", "this-gpu")
NATIVE_FP4 = (10, 0)  # compute capability from which vLLM runs NVFP4 W4A4 on FP4 tensor cores


def choose(fidelity: str, quant: dict | None, capability: tuple[int, int] | None, kwargs: dict) -> tuple[dict, dict]:
    """The vLLM engine kwargs for a quantized checkpoint (``quant``: harness.checkpoint's description of it) and what
    the choice means: (kwargs, record). Only W4A4 checkpoints on GPUs without FP4 units are affected."""
    if fidelity not in FIDELITIES:
        raise unknown_name("fidelity", fidelity, FIDELITIES)
    w4a4 = bool(quant) and quant.get("weight_bits") == 4 and quant.get("activation_bits") == 4
    native = capability is not None and tuple(capability) >= NATIVE_FP4
    rec = {"fidelity": fidelity, "scheme": (quant or {}).get("scheme"), "activations_quantized": w4a4,
           "gpu_capability": ".".join(map(str, capability)) if capability else None, "native_fp4": native,
           "linear_backend": kwargs.get("linear_backend"), "set_by": "config" if "linear_backend" in kwargs else None}
    if w4a4 and not native and fidelity == "scheme" and "linear_backend" not in kwargs:
        kwargs = {**kwargs, "linear_backend": "emulation"}
        rec.update(linear_backend="emulation", set_by="fidelity: scheme")
    return kwargs, rec


def note(rec: dict | None, kernel: str) -> str | None:
    """One line for the verdict: what this run measured, and what the other fidelity would have."""
    if not rec or not rec.get("activations_quantized"):
        return None
    if rec.get("native_fp4"):
        return f"measured the checkpoint's W4A4 scheme on native FP4 kernels ({kernel})"
    if "W4A16" in kernel:
        why = ("fidelity: this-gpu" if rec.get("fidelity") == "this-gpu" else
               f"linear_backend: {rec.get('linear_backend')} in the config" if rec.get("set_by") == "config" else
               "vLLM's default kernel")
        return (f"measured what vLLM serves on this GPU ({why}): {kernel}: the checkpoint's activations were NOT "
                "quantized, so this score leaves out what W4A4 costs where NVFP4 runs natively (Blackwell); on real "
                "weights that was most of the harm (SmolLM2-135M: 78 weight-only vs 63 W4A4). For the scheme's "
                "numbers set fidelity: scheme (W4A4 emulation)")
    if "emulation" in kernel or "W4A4" in kernel:
        return (f"measured the checkpoint's W4A4 scheme ({kernel}, as Blackwell's FP4 kernels compute it); served on "
                f"this GPU (compute capability {rec.get('gpu_capability') or '?'}) vLLM would run Marlin W4A16 with "
                "16-bit activations, which scores higher; for that number set fidelity: this-gpu")
    return None


def mode_note(dataset: str, baseline: dict | None, run: dict | None) -> str | None:
    """A line for the verdict when the BF16 baseline and this run ran vLLM differently (compiled vs eager)."""
    modes = ((baseline or {}).get("mode"), (run or {}).get("mode"))
    if not all(modes) or modes[0] == modes[1]:
        return None
    return (f"{dataset}: the BF16 baseline ran {modes[0]}, this run {modes[1]}: on real weights compiled and eager vLLM "
            "differ by ~0.1% PPL (docs/results), a visible slice of a 1-point threshold; score both the same way "
            "(enforce_eager alike in model.engine.bf16 and .nvfp4)")


def cpu_matmul_note(dataset: str, baseline: dict, run: dict) -> str | None:
    """A line for the verdict when the BF16 baseline and this run computed a bf16 model's CPU matmuls differently
    (the hf backend's cpu_matmul: fp32 = widened to float32 and rounded to bf16 once; native = torch's bf16 kernel).
    Baselines made before they recorded it say nothing."""
    if "cpu_matmul" not in baseline or baseline.get("backend") != run.get("backend"):
        return None
    theirs, mine = baseline["cpu_matmul"] or "native", run.get("cpu_matmul") or "native"
    if theirs == mine or baseline.get("device") != "cpu":
        return None
    return (f"{dataset}: the BF16 baseline ran the CPU matmuls {theirs}, this run {mine}: the two round differently "
            "(SmolLM2-135M's BF16 PPL 0.04% apart); score both the same way (cpu_matmul in model.engine.*.hf)")


def check_kernel(info: dict, want: str | None) -> None:
    """The NVFP4 engine ran what the gate asked for: emulation where ``fidelity: scheme`` chose it, and the config's
    ``require_kernel``; else the error that says what to change."""
    got = info.get("kernel", "?")
    chose = (info.get("fidelity") or {}).get("set_by") == "fidelity: scheme"
    if chose and "emulation" not in got:  # the harness asked for W4A4 emulation and vLLM ran something else
        raise HarnessError(f"fidelity: scheme started the NVFP4 engine with linear_backend: emulation, but vLLM ran "
                           f"{got!r}: this vLLM ignores the setting. Set fidelity: this-gpu to gate what it runs, "
                           "or use a vLLM that has the W4A4 emulation backend")
    if want and want.lower() not in got.lower():
        raise HarnessError(f"config requires NVFP4 kernel {want!r} but this run used {got!r}; on Hopper W4A4 "
                           "needs fidelity: scheme (the default: vLLM's emulation), or drop require_kernel")
