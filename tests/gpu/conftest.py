"""Shared fixtures for the GPU tests: a copy of the tiny config with its own baselines/reports dirs, and a
results file (``$HARNESS_GPU_RESULTS``) that collects the numbers a run measured, for the closing note."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from harness.config.load import load_config
from harness.session.gate import GateSession


def _results_path() -> Path:
    return Path(os.environ.get("HARNESS_GPU_RESULTS") or "gpu-results.json")


def _record_result(key: str, value) -> None:
    """One key of the results file set, the rest kept; the file is rewritten whole (harness.atomic)."""
    from harness.atomic import atomic_write_text

    path = _results_path()
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


@pytest.fixture(scope="session")
def gpu_results():
    return _record_result


def pytest_runtest_logreport(report):
    """Each GPU test's seconds (setup, with the session fixtures it was first to need, call and teardown) into the
    results file as ``durations_s``, so a run cut by device time still says what each test cost; only on a GPU run
    (``$HARNESS_GPU_RESULTS`` set, as tests/gpu/h200.sh does)."""
    if not os.environ.get("HARNESS_GPU_RESULTS"):
        return
    _DURATIONS[report.nodeid] = round(_DURATIONS.get(report.nodeid, 0.0) + report.duration, 1)
    _record_result("durations_s", dict(_DURATIONS))


_DURATIONS: dict = {}


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


@pytest.fixture(scope="session")
def random_qwen2():
    """``random_qwen2(shape_id, out)``: a BF16 checkpoint of a known shape (harness.models.shapes) with seeded random
    weights, generated on the GPU by ``harness synth-checkpoint``'s writer (once), with the tiny tokenizer."""

    def build(shape_id: str, out: Path) -> Path:
        if (out / "harness_synth.json").exists():
            return out
        from harness.models.shapes import KNOWN_SHAPES
        from harness.models.synth import SynthSpec
        from harness.models.synth_write import write_checkpoint

        write_checkpoint(SynthSpec(config=KNOWN_SHAPES[shape_id], precision="bf16", like=shape_id), out,
                         device="cuda", force=True, progress=False)
        return out

    return build


SHAPE_1P5B = "Qwen/Qwen2.5-1.5B-Instruct"
SHAPE_7B = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture(scope="session")
def model_7b(tmp_path_factory, random_qwen2):
    root = Path(os.environ.get("HARNESS_BENCH_DIR") or tmp_path_factory.mktemp("bench"))
    return random_qwen2(SHAPE_7B, root / "7b-shape")


@pytest.fixture(scope="session")
def update_bf16(gpu_cfg):
    """``update_bf16(model, engine_kwargs, tag)``: a BF16 baseline update of ``model`` on the tiny data with these
    vLLM kwargs; returns wall, PPL and the engine's offload facts."""

    def run(model: Path, engine: dict, tag: str) -> dict:
        cfg = gpu_cfg.model_copy(deep=True)
        cfg.name = f"qwen2.5-7b-shape-{tag}"
        cfg.model.path = str(model)
        cfg.model.engine = {"bf16": {"vllm": {"dtype": "bfloat16", "seed": 0, "enforce_eager": True,
                                              "max_num_batched_tokens": 2048, **engine}}}
        s = GateSession(cfg, backend="vllm", update_baselines=True, force=True)
        t0 = time.time()
        try:
            pairs = s.update_baselines()
            info = s.engine_info("bf16")
        finally:
            s.close()
        nll = sum(b.nll * b.tokens for _, b in pairs) / sum(b.tokens for _, b in pairs)
        return {"wall_s": round(time.time() - t0, 1), "ppl": math.exp(nll), "engine": engine,
                "offload": info.get("offload"), "engine_start": info.get("engine_start"),
                "datasets": {b.dataset: b.ppl for _, b in pairs}}

    return run


@pytest.fixture(scope="session")
def bench_models(tmp_path_factory, harness_config, random_qwen2):
    """BF16 dir (random weights, built on the GPU) and its NVFP4 checkpoint (llm-compressor, quant interpreter)."""
    from harness.quant import quantize as q
    from harness.config.sections import CalibrationSpec

    root = Path(os.environ.get("HARNESS_BENCH_DIR") or tmp_path_factory.mktemp("bench15b"))
    bf16 = random_qwen2(SHAPE_1P5B, root / "bf16")
    params = sum(v for v in _param_count(bf16).values())
    nvfp4 = root / "nvfp4"
    if not (nvfp4 / "config.json").exists():
        cal = harness_config.calibration
        spec = q.QuantSpec(model=str(bf16), recipe=_recipe(harness_config), output_dir=str(nvfp4),
                           calibration=q.CalibrationSpec(**{**CalibrationSpec().model_dump(), **cal, "samples": 32,
                                                            "data_files": harness_config.resolve_local(cal["data_files"])}))
        t0 = time.time()
        q.run_quantization(spec, q.QuantInterpreter.from_env(), root / "quantize.log")
        quant_s = time.time() - t0
    else:
        quant_s = None
    return {"bf16": bf16, "nvfp4": nvfp4, "params": params, "quant_s": quant_s}


def _recipe(cfg) -> str:
    from harness.recipes.catalog import load_recipe

    return load_recipe(cfg.path_of("recipes_dir"), "nvfp4").recipe_text


def _param_count(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            for k in fh.keys():
                shape = fh.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                out[k] = n
    return out


@pytest.fixture(scope="session")
def bench_workload():
    """The throughput workload: 200 seeded random prompts x 2040 tokens at max_model_len 2048, and its engine."""
    import random

    rng = random.Random(0)
    n, length = 200, 2040
    return {"prompts": [[rng.randrange(100, 150000) for _ in range(length)] for _ in range(n)],
            "n_prompts": n, "prompt_len": length, "max_model_len": 2048,
            "engine": {"gpu_memory_utilization": 0.5, "enforce_eager": True, "skip_tokenizer_init": True, "seed": 0,
                       "max_num_batched_tokens": 16384}}


class PeakMemory:
    """Peak memory while a block runs, sampled every 50 ms: this process's RSS, its child processes' RSS (the vLLM
    engine core) and GPU 0's used memory (NVML), each in MiB above what it was when the block began."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak: dict[str, float] = {}

    @staticmethod
    def now() -> dict[str, float]:
        import psutil
        import pynvml

        me = psutil.Process()
        kids = sum(c.memory_info().rss for c in me.children(recursive=True) if c.is_running())
        pynvml.nvmlInit()
        try:
            gpu = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
        finally:
            pynvml.nvmlShutdown()
        return {"harness_rss_mib": me.memory_info().rss / 2**20, "engine_rss_mib": kids / 2**20,
                "gpu_used_mib": gpu / 2**20}

    def __enter__(self):
        import threading

        self.start = self.now()
        self.peak = dict(self.start)
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval_s):
                for k, v in self.now().items():
                    self.peak[k] = max(self.peak[k], v)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for k, v in self.now().items():
            self.peak[k] = max(self.peak[k], v)

    def growth(self) -> dict[str, float]:
        return {k: round(self.peak[k] - self.start[k], 1) for k in self.peak}


@pytest.fixture
def peak_memory():
    """``with peak_memory() as pm: ...; pm.growth()``: see PeakMemory."""
    return PeakMemory


# ---- real weights: SmolLM2-135M (configs/smollm2-135m.yaml) on vLLM, shared by test_real_weights / test_real_recipes
REAL_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def real_cfg(tmp_path_factory):
    cfg = load_config(REAL_ROOT / "configs" / "smollm2-135m.yaml")
    cfg.tasks = {}  # the perplexity tests; tests/gpu/test_tasks_gpu.py gates the config's tasks
    out = Path(os.environ.get("HARNESS_GPU_REPORTS") or tmp_path_factory.mktemp("real"))
    cfg.baselines_dir = str(out / "real-baselines")
    cfg.reports_dir = str(out / "real-reports")
    cfg.backend = "vllm"
    return cfg


@pytest.fixture(scope="session")
def real_docs(real_cfg):
    s = GateSession(real_cfg, backend="vllm")
    try:
        return s.prepared("wikitext2").token_ids
    finally:
        s.close()


@pytest.fixture(scope="session")
def real_baseline(real_cfg, gpu_results):
    """BF16 baseline by vLLM as the config says (eager), written like `harness baseline update`."""
    s = GateSession(real_cfg, backend="vllm", update_baselines=True, force=True)
    try:
        pairs = s.update_baselines()
        info = s.engine_info("bf16")
    finally:
        s.close()
    b = pairs[0][1]
    gpu_results("real_bf16_vllm", {"ppl": b.ppl, "tokens": b.tokens, "kept_texts": b.kept_texts,
                                   "compilation": info.get("compilation"), "engine_start_s": info.get("engine_start_s")})
    return b

