from __future__ import annotations

import math
import os

import pytest

from harness.backends import DocResult, backend_class, check_results
from harness.backends.vllm_kwargs import split_kwargs
from harness.backends.vllm_outputs import doc_result, kernel_label
from harness.backends.vllm_errors import is_oom, oom_error
from harness.errors import BackendError, ConfigError


def test_registry_lists_known_backends():
    with pytest.raises(ConfigError, match="known backends: hf, vllm"):
        backend_class("trt")


@pytest.mark.parametrize("bad, message", [
    (DocResult(float("nan"), 3), "non-finite"),
    (DocResult(-math.inf, 3), "non-finite"),
    (DocResult(-1.0, 2), "missing prompt logprobs"),
])
def test_nan_inf_and_missing_logprobs_fail_loudly(bad, message):
    docs = [[1, 2, 3, 4]]
    with pytest.raises(BackendError, match=message):
        check_results([bad], docs, "x")
    with pytest.raises(BackendError, match="returned 0 results for 1 documents"):
        check_results([], docs, "x")


class Flat:
    def __init__(self, rows):
        self.start_indices, self.end_indices, self.token_ids, self.logprobs = [], [], [], []
        for row in rows:
            self.start_indices.append(len(self.logprobs))
            for t, lp in (row or {}).items():
                self.token_ids.append(t)
                self.logprobs.append(lp)
            self.end_indices.append(len(self.logprobs))


class LP:
    def __init__(self, lp):
        self.logprob = lp


def test_vllm_prompt_logprobs_are_summed_from_position_one():
    ids = [7, 8, 9]
    assert doc_result(Flat([None, {8: -1.0}, {9: -0.5}]), ids) == DocResult(-1.5, 2)  # fast path
    assert doc_result(Flat([None, {3: -0.2, 8: -1.0}, {9: -0.5}]), ids) == DocResult(-1.5, 2)  # top-k extras
    assert doc_result(Flat([None, {8: -1.0}, {9: -0.5}]), ids, True).token_logprobs == [-1.0, -0.5]
    assert doc_result(Flat([None, {3: -0.2, 8: -1.0}, {9: -0.5}]), ids, True).token_logprobs == [-1.0, -0.5]
    assert doc_result([None, {8: LP(-1.0)}, {9: LP(-0.5), 3: LP(-0.1)}], ids) == DocResult(-1.5, 2)
    with pytest.raises(BackendError, match="missing prompt logprob for token 9"):
        doc_result(Flat([None, {8: -1.0}, {4: -0.5}]), ids)
    with pytest.raises(BackendError, match="no prompt_logprobs"):
        doc_result(None, ids)
    with pytest.raises(BackendError, match="2 positions, prompt has 3"):
        doc_result(Flat([None, {8: -1.0}]), ids)


def test_vllm_kwargs_unknown_is_an_error_and_missing_in_this_vllm_is_dropped():
    kept, dropped = split_kwargs({"swap_space": 16, "cpu_offload_gb": 220, "dtype": "bfloat16"},
                                 {"cpu_offload_gb", "dtype"})
    assert kept == {"cpu_offload_gb": 220, "dtype": "bfloat16"} and dropped == ["swap_space"]
    with pytest.raises(ConfigError, match=r"unknown vllm engine kwarg\(s\) 'tensor_paralel_size' \(did you mean "
                                          r"'tensor_parallel_size'\?\).*installed vLLM's EngineArgs\): swap_space, "
                                          r"tensor_parallel_size$"):  # few valid keys: all of them
        split_kwargs({"tensor_paralel_size": 2}, {"tensor_parallel_size"})
    with pytest.raises(ConfigError, match="set by the harness"):
        split_kwargs({"max_model_len": 4096}, {"max_model_len"})


def test_kernel_labels():
    assert kernel_label(["MarlinNvFp4LinearKernel"], "nvfp4") == "Marlin W4A16 (activations not quantized)"
    assert kernel_label(["EmulationNvFp4LinearKernel"], "nvfp4") == "emulation W4A4"
    assert kernel_label(["FlashInferCutlassNvFp4LinearKernel"], "nvfp4") == "native W4A4 (FlashInferCutlassNvFp4LinearKernel)"
    assert kernel_label([], "bf16") == "dense bf16"
    assert kernel_label([], "nvfp4").startswith("unknown")  # nothing found in a quantized run is never "dense"


def test_oom_error_names_the_knobs():
    e = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_oom(e) and not is_oom(RuntimeError("shape mismatch"))
    msg = str(oom_error(e, "starting the bf16 engine", {"gpu_memory_utilization": 0.9}))
    for knob in ("gpu_memory_utilization", "max_num_batched_tokens", "tensor_parallel_size", "cpu_offload_gb"):
        assert knob in msg


def test_hf_backend_refuses_unknown_kwargs(root):
    from harness.backends import EngineSpec

    spec = EngineSpec(model=str(root / "harness/tiny/model"), precision="bf16", max_model_len=64,
                      engine_kwargs={"gpu_memory_utilization": 0.5})
    with pytest.raises(ConfigError, match=r"hf backend: unknown hf engine kwarg\(s\) 'gpu_memory_utilization'"):
        backend_class("hf")(spec)


def test_hf_backend_scores_each_token_once_and_batching_does_not_matter(root):
    import torch
    from transformers import AutoModelForCausalLM

    from harness.backends import EngineSpec

    path = str(root / "harness/tiny/model")
    docs = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20, 21, 22, 23]]
    b = backend_class("hf")(EngineSpec(model=path, precision="bf16", max_model_len=64))
    batched = b.loglikelihood_rolling(docs)
    b.spec = EngineSpec(model=path, precision="bf16", max_model_len=64, batch_size=1)
    one = b.loglikelihood_rolling(docs)
    b.close()
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    for d, r, r1 in zip(docs, batched, one):
        ids = torch.tensor([d])
        with torch.no_grad():
            lp = torch.log_softmax(m(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).sum()
        assert r.n_tokens == len(d) - 1
        assert r.logprob_sum == pytest.approx(lp.item(), abs=0.05)
        assert r1.logprob_sum == pytest.approx(r.logprob_sum, abs=0.05)


def test_chunked_token_logprobs_match_a_hand_computed_log_softmax():
    import math

    import torch

    from harness.backends.hf import token_logprobs_chunked

    rows = [[[0.0, 1.0, 2.0], [3.0, 0.0, -1.0], [0.5, 0.5, 0.5], [9.0, 9.0, 9.0]],
            [[-2.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [4.0, 1.0, 0.0]]]
    ids = [[0, 2, 0, 1], [0, 1, 0, 2]]
    got, top, top_ids = token_logprobs_chunked(torch.tensor(rows), torch.tensor(ids), chunk=4, top_k=2)  # 4 + 2
    for b in range(2):
        for t in range(3):  # position t predicts ids[t + 1]
            z = rows[b][t]
            norm = math.log(sum(math.exp(v) for v in z))
            assert got[b, t].item() == pytest.approx(z[ids[b][t + 1]] - norm, abs=1e-6)
            best = sorted(range(3), key=lambda i: (-z[i], i))[:2]  # the two largest logits (ties: lower id first)
            assert top[b, t].tolist() == pytest.approx([z[i] - norm for i in best], abs=1e-6)
            if z[best[0]] != z[best[1]] and len(set(z)) == 3:
                assert top_ids[b, t].tolist() == best


PEAK_SCRIPT = """
import re, sys, torch
from harness.backends.hf import token_logprobs_chunked


def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024


torch.manual_seed(0)
# 4096 random columns tiled across the vocabulary: the same memory as 311M fresh draws (3 s of the test's time)
logits = torch.randn(1, 2048, 4096, dtype=torch.bfloat16).repeat(1, 1, 38)[:, :, :151936].contiguous()
ids = torch.randint(0, 151936, (1, 2048))
try:
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (Linux)
except OSError:
    pass
before = status("VmRSS")
if sys.argv[1] == "chunked":
    out = token_logprobs_chunked(logits, ids)[0]
else:  # what the backend did before: a full fp32 log_softmax
    out = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
print(status("VmHWM") - before)
"""


def test_benchmark_hf_logprob_peak_memory_at_2048_tokens(benchmark, root):
    """Peak extra CPU memory of turning one 2048-token sequence's logits (Qwen2.5 vocab, 151,936) into token
    log-probabilities: the backend's chunked path against the full fp32 log_softmax it did before (``PEAK_SCRIPT
    full``). By hand, the full path holds the fp32 logits and their log_softmax at once: 2 x 2048 x 151,936 x 4 B =
    2,374 MiB (measured 2,375 on 2026-11-27, so the full path is not re-run here: 9 s of CI); the chunked path must
    need under a quarter of that (measured 303)."""
    import subprocess
    import sys

    def peak(mode: str) -> float:
        r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return float(r.stdout.strip().splitlines()[-1])

    chunked = benchmark.pedantic(peak, args=("chunked",), rounds=1, iterations=1)
    full = 2 * 2048 * 151936 * 4 / 2**20  # the full path's floor, by hand
    benchmark.extra_info.update({"peak_mib_chunked": round(chunked), "full_path_mib_by_hand": round(full),
                                 "tokens": 2048, "vocab": 151936})
    print(f"peak extra memory at 2048 tokens: chunked {chunked:.0f} MiB, full path {full:.0f} MiB by hand")
    assert 0 < chunked < full / 4, (chunked, full)


def test_cpu_linears_widen_to_float32_and_round_to_bf16_as_a_gpu_gemm_does(root):
    """``cpu_matmul: fp32`` (the default): each bf16 Linear computes x·Wᵀ + b in float32 (bf16 widens exactly) and
    rounds once to bf16; ``native`` keeps torch's bf16 kernel. The two differ only in the order of the float32 sums
    before that rounding: an element rounds to the neighbouring bf16 now and then, so a document's mean log-likelihood
    moves by less than one bf16 step of itself (2^-8 relative; measured 2e-4 on these texts, 1.5e-6 over the tiny
    default's 48k tokens, whose score stays 99.14)."""
    import torch

    from harness.backends import EngineSpec
    from harness.backends.cpu_matmul import widen_linears

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24).to(torch.bfloat16)
    x = torch.randn(5, 64).to(torch.bfloat16)
    want = (x.double() @ lin.weight.double().T + lin.bias.double()).float().to(torch.bfloat16)  # by hand, wider
    class Own(torch.nn.Linear):  # a subclass computes as it likes: left alone
        pass

    mlp = torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(24, 3).to(torch.bfloat16), Own(3, 3))
    assert widen_linears(mlp, "native", "cpu", torch.bfloat16) == 0 and type(lin) is torch.nn.Linear
    assert widen_linears(mlp, "fp32", "cuda", torch.bfloat16) == 0 and widen_linears(mlp, "fp32", "cpu", torch.float32) == 0
    assert widen_linears(mlp, "fp32", "cpu", torch.bfloat16) == 2 and type(mlp[3]) is Own
    assert isinstance(lin, torch.nn.Linear) and lin.weight.dtype == torch.bfloat16  # the same module, its weights kept
    got = lin(x)
    assert got.dtype == torch.bfloat16
    # float32 and float64 sums of 64 products round to the same bf16 but for values within 2^-16 of a rounding edge
    assert (got != want).float().mean() < 0.02 and torch.allclose(got.float(), want.float(), rtol=2 ** -8, atol=0)
    assert widen_linears(mlp, "fp32", "cpu", torch.bfloat16) == 0  # already widened: nothing twice

    path = str(root / "harness/tiny/model")
    docs = [list(range(5 + i, 60 + 3 * i)) for i in range(4)]
    res = {}
    for mode in ("native", "fp32"):
        b = backend_class("hf")(EngineSpec(model=path, precision="bf16", max_model_len=128,
                                           engine_kwargs={"cpu_matmul": mode}))
        res[mode] = [r.logprob_sum / r.n_tokens for r in b.loglikelihood_rolling(docs)]
        assert b.info()["cpu_matmul"] == (None if mode == "native" else "fp32")
        b.close()
    assert res["fp32"] != res["native"]  # the setting reaches the model's forward
    assert res["fp32"] == pytest.approx(res["native"], rel=2 ** -8)


def test_calibration_matmuls_widen_inside_the_block_only_and_only_bf16_on_the_cpu():
    """``quantize.cpu_matmul: fp32``: while llm-compressor calibrates (harness/quant/quantize.py), ``F.linear`` and
    ``torch.matmul`` of bf16 CPU tensors compute in float32 and round once to bf16, as ``Float32Linear`` does; the
    modules keep their classes (recipes target ``Linear`` by name). Before and after the block, and under
    ``native``, torch's own functions are in place."""
    import torch
    import torch.nn.functional as F

    from harness.backends.cpu_matmul import fp32_cpu_matmuls

    torch.manual_seed(0)
    x, w, b = (torch.randn(*s).to(torch.bfloat16) for s in ((3, 7, 64), (24, 64), (24,)))
    q, k = torch.randn(2, 5, 32).to(torch.bfloat16), torch.randn(2, 32, 5).to(torch.bfloat16)
    lin_want = (x.double() @ w.double().T + b.double()).float().to(torch.bfloat16)  # by hand, wider
    mm_want = (q.double() @ k.double()).float().to(torch.bfloat16)
    lin0, mm0 = F.linear, torch.matmul
    with fp32_cpu_matmuls("native") as n:
        assert F.linear is lin0 and torch.matmul is mm0
    assert n["widened"] == 0
    with fp32_cpu_matmuls("fp32") as n:
        assert F.linear is not lin0 and torch.matmul is not mm0
        got_lin = torch.nn.Linear(64, 24).to(torch.bfloat16)
        got_lin.weight.data, got_lin.bias.data = w, b
        y, z = got_lin(x), torch.matmul(q, k)
        assert y.dtype == z.dtype == torch.bfloat16 and type(got_lin) is torch.nn.Linear
        f32 = torch.matmul(q.float(), k.float())  # other dtypes: torch's own result, not counted
        assert f32.dtype == torch.float32 and torch.equal(f32, mm0(q.float(), k.float()))
    assert F.linear is lin0 and torch.matmul is mm0 and n["widened"] == 2
    for got, want in ((y, lin_want), (z, mm_want)):  # float32 and float64 sums round alike but at rounding edges
        assert (got != want).float().mean() < 0.02 and torch.allclose(got.float(), want.float(), rtol=2 ** -8, atol=0)
    with pytest.raises(RuntimeError, match="boom"), fp32_cpu_matmuls("fp32"):
        raise RuntimeError("boom")
    assert F.linear is lin0 and torch.matmul is mm0  # restored after an error too


def test_cpu_fp4_rounding_is_compressed_tensors_own_bit_for_bit_and_the_e2m1_definition():
    """harness/backends/cpu_fp4.py against compressed-tensors' own CPU rounding (eight masked assignments) and against
    the E2M1 definition (harness/reference/nvfp4.py, nearest value, ties to the even mantissa): every boundary, its float
    neighbours, +-0, +-inf, NaN and 100k random values, in float32 and bf16: the same bits (sign of zero and NaN
    included). Registered, compressed-tensors' entry point hands CPU tensors to it, and nothing else."""
    import numpy as np
    import torch
    from compressed_tensors.quantization.utils import fp4_utils
    from compressed_tensors.utils.impl_backend import ImplBackend

    from harness.reference import nvfp4 as R
    from harness.backends import cpu_fp4

    own = fp4_utils.cast_to_fp4.__wrapped__  # compressed-tensors' eager body, bypassing any registered backend
    for dt in (torch.float32, torch.bfloat16):
        b = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], dtype=dt)
        special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=dt)
        x = torch.cat([b, -b, torch.nextafter(b, b + 1), torch.nextafter(b, b - 1), special,
                       (torch.randn(100_000) * 3).to(dt)])
        got, ct = cpu_fp4.cast_to_fp4_cpu(x), own(x.clone())
        assert got.dtype == dt and torch.equal(torch.isnan(got), torch.isnan(ct))
        assert torch.equal(got.float().view(torch.int32), ct.float().view(torch.int32))  # bits, -0.0 and NaN signs too
        finite = torch.isfinite(x)
        codes = R.e2m1_codes(x[finite].float().numpy().astype(np.float64))
        assert np.array_equal(got[finite].float().numpy(), R.e2m1_values(codes).astype(np.float32))
    assert cpu_fp4.register() and cpu_fp4.register()  # once per process; a second call changes nothing
    entries = [(fn, req) for fn, req, _ in ImplBackend._backends["cast_to_fp4"] if fn is cpu_fp4.cast_to_fp4_cpu]
    assert len(entries) == 1
    req = entries[0][1]
    assert req(torch.zeros(2)) and not req(torch.zeros(2, device="meta"))  # CPU tensors only (CUDA: Triton)
    assert torch.equal(fp4_utils.cast_to_fp4(x).float().view(torch.int32), got.float().view(torch.int32))
