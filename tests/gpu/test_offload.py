"""CPU weight offload on one GPU: a model that does not fit the engine's GPU share is refused with the knobs, and
fits once offload is on; the backend verifies that weights really left the GPU (vLLM 0.26's default V2 model
runner ignores offload for dense models: the harness starts such engines on the V1 runner).

The Qwen2.5-7B shape (15.2 GB of BF16, random weights) against a 14 GiB share (gpu_memory_utilization 0.1):
UVA (``cpu_offload_gb: 12``) and the prefetch offloader give the same numbers; only speed differs.
"""
from __future__ import annotations

import pytest

from harness.errors import BackendError

pytestmark = pytest.mark.scale  # `pytest -m scale` (sizes and speed at real shapes); not part of `pytest -m gpu`

SHARE = 0.1  # of ~140 GiB: 14 GiB, less than the 7B shape's 15.2 GB of BF16 weights
PREFETCH = {"offload_backend": "prefetch", "offload_group_size": 2, "offload_num_in_group": 1,
            "offload_prefetch_step": 1}  # 14 of 28 layers (6.1 GiB) in CPU memory


def test_7b_shape_does_not_fit_the_share_without_offload(model_7b, update_bf16, gpu_results):
    with pytest.raises(BackendError) as e:
        update_bf16(model_7b, {"gpu_memory_utilization": SHARE}, "no-offload")
    gpu_results("7b_no_offload_error", str(e.value)[:600])
    assert "offload_backend" in str(e.value) and "tensor_parallel_size" in str(e.value)


def test_7b_shape_fits_with_cpu_offload_and_the_offload_is_verified(model_7b, update_bf16, gpu_results, benchmark):
    uva = benchmark.pedantic(update_bf16, args=(model_7b, {"gpu_memory_utilization": SHARE, "cpu_offload_gb": 12},
                                                "uva"), rounds=1, iterations=1)
    pre = update_bf16(model_7b, {"gpu_memory_utilization": SHARE, **PREFETCH}, "prefetch")
    gpu_results("7b_offload_1gpu", {"uva": uva, "prefetch": pre})
    benchmark.extra_info.update(uva_wall_s=uva["wall_s"], prefetch_wall_s=pre["wall_s"])
    assert uva["offload"]["offloader"] == "UVAOffloader" and 11.5 <= uva["offload"]["offloaded_gib"] <= 12.5, uva
    assert pre["offload"]["offloader"] == "PrefetchOffloader" and pre["offload"]["offloaded_gib"] > 5, pre
    assert uva["offload"]["runner_env"] == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert abs(uva["ppl"] - pre["ppl"]) / pre["ppl"] < 1e-3, (uva["ppl"], pre["ppl"])  # offload moves bytes, not numbers
