"""Shared fixtures for the GPU tests: a copy of the tiny config with its own baselines/reports dirs, and a
results file (``$HARNESS_GPU_RESULTS``) that collects the numbers a run measured, for the closing note."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.gate import GateSession


@pytest.fixture(scope="session")
def gpu_results():
    path = Path(os.environ.get("HARNESS_GPU_RESULTS") or "gpu-results.json")
    data: dict = json.loads(path.read_text()) if path.exists() else {}

    def record(key: str, value) -> None:
        data[key] = value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        tmp.replace(path)

    return record


@pytest.fixture(scope="session")
def gpu_cfg(harness_config, tmp_path_factory):
    """The tiny config, with vLLM BF16 baselines written to a temp dir (so vLLM is compared with vLLM)."""
    cfg = harness_config.model_copy(deep=True)
    tmp = tmp_path_factory.mktemp("gpu")
    cfg.baselines_dir = str(tmp / "baselines")
    cfg.reports_dir = os.environ.get("HARNESS_GPU_REPORTS") or str(tmp / "reports")
    cfg.backend = "vllm"
    return cfg


@pytest.fixture
def nvml_used_mib():
    """Device-wide used memory of GPU 0 in MiB (NVML: counts the engine-core process too, makes no CUDA context)."""
    import pynvml

    def used() -> float:
        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / 2**20
        finally:
            pynvml.nvmlShutdown()

    return used


@pytest.fixture(scope="session")
def vllm_bf16_baselines(gpu_cfg, gpu_results):
    """BF16 baselines scored by vLLM (the update flow); engine closed afterwards."""
    s = GateSession(gpu_cfg, backend="vllm", update_baselines=True)
    try:
        pairs = s.update_baselines()
        info = s.engine_info("bf16")
    finally:
        s.close()
    gpu_results("tiny_bf16_vllm", {b.dataset: {"ppl": b.ppl, "nll": b.nll, "tokens": b.tokens} for _, b in pairs})
    gpu_results("engine_start_s_bf16", info.get("engine_start_s"))
    return {b.dataset: b for _, b in pairs}
