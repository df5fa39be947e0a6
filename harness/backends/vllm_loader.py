"""Code that runs inside vLLM's engine and worker processes (imports vllm at import time).

- ``harness_dequant``: a vLLM load format for BF16 views of NVFP4 checkpoints (harness/models/synth.py): the weights are
  the NVFP4 checkpoint's exact dequantization, made on the GPU while loading, so a 72B-shape BF16 model needs no
  145 GB on disk. Offloaded layers (``cpu_offload_gb`` / ``offload_backend``) work as with any loader: vLLM's own
  ``load_weights`` copies each tensor to wherever its parameter lives.
- :class:`HarnessWorkerExtension`: passed as ``worker_extension_cls``; vLLM imports it in every worker before the
  model loads, which registers the load format there (general plugins would need an installed entry point).
- :func:`offload_info` / :func:`quant_kernels`: run through ``LLM.apply_model``; what was really offloaded and which
  NVFP4 kernel really runs, read off the loaded model.
"""
from __future__ import annotations

import time
from pathlib import Path

from vllm.logger import init_logger
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from harness.checkpoint import dequantized_weights, view_source

logger = init_logger("vllm.harness")
LOAD_FORMAT = "harness_dequant"


@register_model_loader(LOAD_FORMAT)
class DequantViewLoader(BaseModelLoader):
    """Loads a BF16 view dir (``harness_view.json``) by dequantizing its NVFP4 source checkpoint."""

    def download_model(self, model_config) -> None:
        pass  # local only: the view and its source are dirs

    def load_weights(self, model, model_config) -> None:
        import torch


        src = view_source(Path(model_config.model))
        if src is None:
            raise ValueError(f"load_format {LOAD_FORMAT}: {model_config.model} has no harness_view.json")
        t0 = time.perf_counter()
        model.load_weights(dequantized_weights(src, device=torch.device("cuda", torch.cuda.current_device())))
        # the same words as vLLM's default loader, so one log parser reads both
        logger.info("Loading weights took %.2f seconds", time.perf_counter() - t0)


class HarnessWorkerExtension:
    """Mixed into vLLM's worker class; its import registers the harness's load format in the worker process."""


def quant_kernels(model) -> list[str]:
    """Class names of the quantized linear kernels in the loaded model: a compressed-tensors scheme's kernel
    (``quant_method.scheme.kernel``) or a ModelOpt linear method's (``quant_method.kernel``)."""
    names = set()
    for m in model.modules():
        qm = getattr(m, "quant_method", None)
        scheme = getattr(m, "scheme", None) or getattr(qm, "scheme", None)
        k = getattr(scheme, "kernel", None) or getattr(qm, "kernel", None)
        if k is not None:
            names.add(type(k).__name__)
    return sorted(names)


def offload_info(model) -> dict:
    """What vLLM's offloader really moved to CPU memory: UVA-mapped or CPU parameters, plus prefetch storage."""
    from vllm.model_executor.offloader.base import get_offloader

    off = get_offloader()
    uva = cpu = 0
    gpu = 0
    for p in model.parameters():
        b = p.numel() * p.element_size()
        if getattr(p, "_vllm_is_uva_offloaded", False):
            uva += b
        elif p.device.type == "cpu":
            cpu += b
        else:
            gpu += b
    prefetch = int(getattr(off, "total_offloaded_bytes", 0) or 0)      # PrefetchOffloader's own count
    uva = max(uva, int(getattr(off, "cpu_offload_bytes", 0) or 0))     # UVAOffloader's own count
    buffers = int(getattr(getattr(off, "buffer_pool", None), "total_bytes", 0) or 0)
    return {"offloader": type(off).__name__, "offloaded_bytes": uva + cpu + prefetch, "uva_bytes": uva,
            "cpu_bytes": cpu, "prefetch_bytes": prefetch, "prefetch_buffer_bytes": buffers,
            # prefetched parameters point at the shared GPU buffers: count those once
            "gpu_param_bytes": gpu - prefetch + buffers if prefetch else gpu,
            "offloaded_modules": len(getattr(off, "module_offloaders", []) or [])}
