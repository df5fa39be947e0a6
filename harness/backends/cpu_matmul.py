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
