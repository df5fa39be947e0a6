"""bf16 linear layers on a CPU, computed in float32 and rounded to bf16 (the hf backend's ``cpu_matmul: fp32``).

On CPUs without bf16 units (AVX2 only, as on the CI machines) torch's bf16 ``linear`` is ~10x slower than float32
(measured: [8192, 128] x [128, 384], 105 ms against 11 ms on 2 cores). Widening bf16 to float32 is exact, so the only
difference from a bf16 kernel is the order of the float32 accumulation before the output is rounded to bf16, which is
also how GPU bf16 GEMMs (and vLLM's) compute: inputs, weights and outputs stay bf16 tensors. ``native`` keeps torch's
bf16 kernel (faster on CPUs with AMX or AVX512-BF16).

Each ``nn.Linear`` of the model becomes an instance of a subclass whose ``forward`` widens; the module, its weights
and its hooks stay as they are, so compressed-tensors' fake-quantizing forward (which quantizes the activations and
then calls the module class's own ``forward``) and the reference W4A4 model's pre-hooks run unchanged around it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

DEFAULT = "fp32"


class Float32Linear(torch.nn.Linear):
    """A Linear whose bf16 CPU forward runs in float32 and rounds its output to bf16; any other input as before."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if input.dtype == torch.bfloat16 and w.dtype == torch.bfloat16 and input.device.type == "cpu":
            b = None if self.bias is None else self.bias.float()
            return F.linear(input.float(), w.float(), b).to(torch.bfloat16)
        return super().forward(input)


def widen_linears(model: torch.nn.Module, setting: str, device: str, dtype) -> int:
    """Under ``fp32``, for a bf16 model on the CPU: every plain ``nn.Linear`` computes in float32 (subclasses, which
    may compute otherwise, are left alone). Returns how many."""
    if setting != "fp32" or device != "cpu" or dtype != torch.bfloat16:
        return 0
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = Float32Linear
            n += 1
    return n


@contextmanager
def fp32_cpu_matmuls(setting: str = DEFAULT):
    """Under ``fp32``, while the block runs: ``torch.nn.functional.linear`` and ``torch.matmul`` of bf16 CPU tensors
    compute in float32 and round the result to bf16 (as ``Float32Linear`` does). For code that is not ours to
    change, where modules must keep their classes (llm-compressor's calibration forward passes: recipes target layers
    by class name). Anything else (other dtypes, GPU tensors, ``native``) runs torch's own kernel. Yields a dict
    counting the calls widened."""
    count = {"widened": 0}
    if setting != "fp32":
        yield count
        return
    linear, matmul = F.linear, torch.matmul

    def _cpu_bf16(*ts) -> bool:  # real tensors only: a tracer's proxies (torch.fx) pass through to torch's own
        return all(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in ts)

    def wide_linear(input, weight, bias=None):
        if _cpu_bf16(input, weight) and (bias is None or bias.dtype == torch.bfloat16):
            count["widened"] += 1
            return linear(input.float(), weight.float(), None if bias is None else bias.float()).to(torch.bfloat16)
        return linear(input, weight, bias)

    def wide_matmul(input, other, *, out=None):
        if out is None and _cpu_bf16(input, other):
            count["widened"] += 1
            return matmul(input.float(), other.float()).to(torch.bfloat16)
        return matmul(input, other) if out is None else matmul(input, other, out=out)

    F.linear, torch.matmul = wide_linear, wide_matmul
    try:
        yield count
    finally:
        F.linear, torch.matmul = linear, matmul
