"""How the vLLM backend starts an engine, with a stand-in for vllm (CPU): offload engages (V1 runner for that
engine only) and is verified, the engine's log is captured and its start broken down, BF16 views load through the
harness's load format. The real thing runs on the H200 (tests/gpu/test_offload.py, test_scale_72b.py)."""
from __future__ import annotations

import dataclasses
import json
import logging
import logging.config
import os
import sys
import time
import types

import pytest

from harness.backends import EngineSpec
from harness.backends.vllm_env import parse_engine_log
from harness.errors import BackendError, ConfigError

GIB = 2**30
# lines as vLLM 0.26 logs them (formats from its source: default_loader.py, gpu_model_runner.py, core.py, ...)
LOG_LINES = [
    "Loading weights took 3.50 seconds",
    "Model loading took 41.3 GiB memory and 12.500000 seconds",
    "Available KV cache memory: 64.2 GiB",
    "GPU KV cache size: 210,368 tokens",
    "init engine (profile, create kv cache, warmup model) took 8.25 s",
]


ENV_KEYS = ("VLLM_USE_V2_MODEL_RUNNER", "VLLM_LOGGING_CONFIG_PATH", "VLLM_ENABLE_V1_MULTIPROCESSING")


def fake_envs() -> types.ModuleType:
    """vllm.envs as 0.26 behaves: variables read lazily from os.environ until an engine core started in this
    process calls enable_envs_cache(), then frozen until disable_envs_cache()."""
    envs = types.ModuleType("vllm.envs")
    envs.frozen = None
    envs.get = lambda k: (envs.frozen if envs.frozen is not None else os.environ).get(k)
    envs.enable_envs_cache = lambda: setattr(envs, "frozen", dict(os.environ))
    envs.disable_envs_cache = lambda: setattr(envs, "frozen", None)
    return envs


class FakeLLM:
    seen: list[dict] = []
    offloaded = 12 * GIB
    envs = fake_envs()
    fail: Exception | None = None  # raised by the next start
    cleanups: list[str] = []       # vllm.distributed.parallel_state.cleanup_dist_env_and_memory calls

    def __init__(self, **kw):
        envs = FakeLLM.envs
        FakeLLM.seen.append({"kwargs": kw, "env": {k: envs.get(k) for k in ENV_KEYS}})
        if FakeLLM.fail is not None:
            raise FakeLLM.fail
        path = envs.get("VLLM_LOGGING_CONFIG_PATH")
        in_process = envs.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        if path and os.path.exists(path):  # what vLLM's engine process does with it: dictConfig, then log
            logging.config.dictConfig(json.loads(open(path).read()))
        if in_process or (path and os.path.exists(path)):
            log = logging.getLogger("vllm.engine")  # in process: this process's vllm logger, as vLLM's import set it
            for line in LOG_LINES:
                log.info(line)
            for h in logging.getLogger("vllm").handlers:
                h.flush()
        if in_process:
            envs.enable_envs_cache()  # EngineCore.__init__ does, in whichever process it runs
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        self.shut = False

    def _shutdown(self):
        self.shut = True

    requests: list[tuple] = []          # (prompts, params) of each generate() call
    generate_error: Exception | None = None
    generate_s = 0.0

    def generate(self, prompts, params, use_tqdm=True):
        FakeLLM.requests.append((prompts, params))
        time.sleep(FakeLLM.generate_s)
        if FakeLLM.generate_error is not None:
            raise FakeLLM.generate_error
        return []

    def apply_model(self, fn):
        return [fn(None)]

    def reset_prefix_cache(self):
        FakeLLM.requests.append(("reset_prefix_cache", None))


@pytest.fixture
def fake_vllm(monkeypatch):
    @dataclasses.dataclass
    class EngineArgs:
        gpu_memory_utilization: float = 0.9
        cpu_offload_gb: float = 0
        offload_backend: str = "auto"
        offload_group_size: int = 0
        load_format: str = "auto"
        worker_extension_cls: str = ""
        dtype: str = "auto"
        tensor_parallel_size: int = 1
        pipeline_parallel_size: int = 1
        data_parallel_size: int = 1
        distributed_executor_backend: str | None = None
        max_num_batched_tokens: int | None = None
        max_num_seqs: int | None = None
        enforce_eager: bool = False
        compilation_config: dict | None = None
        optimization_level: int = 2
        seed: int = 0
        max_logprobs: int = 20
        enable_prefix_caching: bool | None = None

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.__version__ = FakeLLM, "0.26.0-fake"
    vllm.SamplingParams = lambda **kw: kw
    FakeLLM.envs = vllm.envs = fake_envs()
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs
    loader = types.ModuleType("harness.backends.vllm_loader")  # the in-worker helpers need real vllm
    loader.LOAD_FORMAT = "harness_dequant"
    loader.quant_kernels = lambda model: []
    loader.offload_info = lambda model: {"offloader": "UVAOffloader" if FakeLLM.offloaded else "NoopOffloader",
                                         "offloaded_bytes": FakeLLM.offloaded}
    ps = types.ModuleType("vllm.distributed.parallel_state")
    ps.cleanup_dist_env_and_memory = lambda: FakeLLM.cleanups.append("cleanup")
    for name, mod in (("vllm.distributed", types.ModuleType("vllm.distributed")),
                      ("vllm.distributed.parallel_state", ps)):
        monkeypatch.setitem(sys.modules, name, mod)
    for name, mod in (("vllm", vllm), ("vllm.envs", vllm.envs), ("vllm.engine", types.ModuleType("vllm.engine")),
                      ("vllm.engine.arg_utils", arg_utils), ("harness.backends.vllm_loader", loader)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    vlog = logging.getLogger("vllm")
    monkeypatch.setattr(vlog, "level", logging.INFO)  # what importing vllm does (VLLM_CONFIGURE_LOGGING=1)
    FakeLLM.seen, FakeLLM.offloaded, FakeLLM.fail, FakeLLM.cleanups = [], 12 * GIB, None, []
    FakeLLM.requests, FakeLLM.generate_error, FakeLLM.generate_s = [], None, 0.0
    yield FakeLLM
    for h in list(vlog.handlers):
        h.close()
        vlog.removeHandler(h)


def _backend(kwargs: dict, model: str = "m"):
    from harness.backends.vllm import VLLMBackend

    return VLLMBackend(EngineSpec(model=model, precision="bf16", max_model_len=2048, engine_kwargs=kwargs))


def test_offload_runs_on_the_v1_runner_for_that_engine_only_and_is_verified(fake_vllm):
    eng = _backend({"cpu_offload_gb": 12})
    assert fake_vllm.seen[-1]["env"]["VLLM_USE_V2_MODEL_RUNNER"] == "0"  # while the engine processes spawn
    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ                    # and not after
    info = eng.info()
    assert info["offload"]["offloaded_gib"] == 12.0 and info["offload"]["offloader"] == "UVAOffloader"
    assert info["offload"]["requested"] == {"cpu_offload_gb": 12}
    _backend({"gpu_memory_utilization": 0.5})  # no offload asked: the default runner, untouched
    assert fake_vllm.seen[-1]["env"]["VLLM_USE_V2_MODEL_RUNNER"] is None


def test_scoring_engines_start_eager_unless_the_config_says_how_to_compile(fake_vllm):
    def start(**kw):
        eng = _backend(kw)
        return fake_vllm.seen[-1]["kwargs"].get("enforce_eager"), eng.info()["harness_defaults"]

    shared = {"enable_prefix_caching": True}  # task contexts shared (only task requests read the cache)
    assert start() == (True, {"enforce_eager": True, **shared})     # prompt scoring never decodes
    assert start(enforce_eager=False) == (False, shared)             # the config's own setting stands
    assert start(compilation_config={"mode": 1}) == (None, shared)   # it says how to compile: nothing added
    assert start(optimization_level=0) == (None, shared)
    assert start(enable_prefix_caching=False) == (True, {"enforce_eager": True})


def test_an_engine_asked_for_more_than_20_next_tokens_is_started_with_that_max_logprobs(fake_vllm):
    from harness.backends.vllm import VLLMBackend

    def start(top_k, **kw):
        VLLMBackend(EngineSpec(model="m", precision="bf16", max_model_len=2048, engine_kwargs=kw, top_k=top_k))
        return fake_vllm.seen[-1]["kwargs"].get("max_logprobs")

    assert start(0) is None and start(20) is None  # vLLM's own default (20) serves
    assert start(50) == 50
    assert start(50, max_logprobs=100) == 100     # the config's own setting stands


def test_offload_that_does_not_engage_is_an_error_that_says_what_to_change(fake_vllm):
    fake_vllm.offloaded = 0
    with pytest.raises(BackendError, match="(?s)asks for CPU weight offload.*offloaded nothing.*NoopOffloader.*"
                                           "VLLM_USE_V2_MODEL_RUNNER=0.*tensor_parallel_size"):
        _backend({"offload_backend": "prefetch", "offload_group_size": 4})


def test_a_forced_v2_runner_with_offload_is_refused_before_any_gpu_time(fake_vllm, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ConfigError, match="VLLM_USE_V2_MODEL_RUNNER=1 is set"):
        _backend({"cpu_offload_gb": 12})
    assert fake_vllm.seen == []


def test_engine_log_is_captured_and_the_start_broken_down(fake_vllm):
    eng = _backend({})
    info = eng.info()
    assert "Model loading took 41.3 GiB" in open(info["engine_log"]).read()
    b = info["engine_start"]
    assert (b["weights_s"], b["model_load_s"], b["model_load_gib"], b["init_engine_s"]) == (3.5, 12.5, 41.3, 8.25)
    assert (b["kv_cache_gib"], b["kv_cache_tokens"]) == (64.2, 210368)
    # a user's own logging config is left alone
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = "/their/logging.json"
    try:
        _backend({})
    finally:
        del os.environ["VLLM_LOGGING_CONFIG_PATH"]
    assert fake_vllm.seen[-1]["env"]["VLLM_LOGGING_CONFIG_PATH"] == "/their/logging.json"


def test_a_one_gpu_engine_runs_its_core_in_this_process_and_its_log_is_still_read(fake_vllm, monkeypatch):
    eng = _backend({})
    assert fake_vllm.seen[-1]["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # while it starts
    assert fake_vllm.seen[-1]["env"]["VLLM_LOGGING_CONFIG_PATH"] is None      # vllm was imported: too late for it
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ                  # and not after
    info = eng.info()
    assert info["engine_core"] == "in this process"
    assert info["engine_start"]["model_load_s"] == 12.5 and info["engine_start"]["init_engine_s"] == 8.25
    eng.close()
    logging.getLogger("vllm.engine").info("Loading weights took 99.00 seconds")  # a later engine's line
    assert "99.00" not in open(info["engine_log"]).read()                        # is not this engine's
    # several GPUs, offload or compiled: the core keeps its own process (its log comes through the logging config)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    for kw in ({"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}, {"cpu_offload_gb": 12},
               {"enforce_eager": False}, {"compilation_config": {"mode": 3}}):  # compiled: Dynamo state stays put
        eng = _backend(kw)
        env = fake_vllm.seen[-1]["env"]
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] is None and env["VLLM_LOGGING_CONFIG_PATH"], kw
        assert eng.info()["engine_core"] == "own process"
        assert eng.info()["engine_start"]["model_load_s"] == 12.5
    # the user's own setting wins either way
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert _backend({}).info()["engine_core"] == "own process"
    assert fake_vllm.seen[-1]["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_an_engine_after_an_in_process_one_reads_its_own_environment(fake_vllm):
    """vLLM freezes its environment variables when an engine core starts in this process; the offloading engine
    started after it must still get the V1 runner and its own process."""
    _backend({}).close()
    assert fake_vllm.envs.frozen is not None  # the in-process core froze them
    _backend({"cpu_offload_gb": 12})
    env = fake_vllm.seen[-1]["env"]
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] is None


def test_an_in_process_engine_that_fails_to_start_leaves_nothing_for_the_next(fake_vllm):
    """Its distributed state and cached memory are released as vLLM's shutdown would (an engine process of its own
    takes them with it), and the error carries none of vLLM's frames (which hold what it had allocated)."""
    fake_vllm.fail = RuntimeError("CUDA error: something went wrong")
    with pytest.raises(BackendError) as own:
        _backend({"enforce_eager": False})  # compiled: its own process
    assert fake_vllm.cleanups == []
    with pytest.raises(BackendError) as here:
        _backend({})
    assert fake_vllm.cleanups == ["cleanup"]
    assert here.value.__context__ is None and here.value.__cause__ is None
    assert "something went wrong" in str(here.value) and "something went wrong" in str(own.value)
    fake_vllm.fail = None
    assert _backend({}).info()["engine_core"] == "in this process"  # the next one starts


def test_parse_engine_log_derives_the_rest_of_the_start():
    b = parse_engine_log("\n".join(LOG_LINES), total_s=30.0)
    assert b["other_s"] == pytest.approx(30.0 - 12.5 - 8.25)
    # the V2 model runner words it without "memory" (seen on the H200, vLLM 0.26.0)
    v2 = parse_engine_log("Model loading took 41.86 GiB and 13.146940 seconds")
    assert (v2["model_load_gib"], v2["model_load_s"]) == (41.86, 13.14694)
    assert parse_engine_log("nothing here", total_s=5.0) == {"total_s": 5.0}
    # compiled engines: torch.compile's and graph capture's seconds, in vLLM 0.26's words (compilation/monitor.py,
    # gpu_model_runner.py); whether FlashInfer autotuned at start (model_executor/warmup/kernel_warmup.py)
    c = parse_engine_log("torch.compile took 28.61 s in total\nGraph capturing finished in 7 secs, took 0.41 GiB\n"
                         "Using FlashInfer autotune cache file: /root/.cache/vllm/flashinfer_autotune_cache/x.json")
    assert (c["compile_s"], c["graph_capture_s"], c["flashinfer_autotune"]) == (28.61, 7.0, True)
    assert parse_engine_log("Skipping FlashInfer autotune because it is disabled.")["flashinfer_autotune"] is False


def test_a_bf16_view_loads_through_the_harness_load_format(fake_vllm, tmp_path):
    view = tmp_path / "view"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    view.mkdir()
    (view / "harness_view.json").write_text(json.dumps({"source": "../src"}))
    _backend({}, model=str(view))
    kw = fake_vllm.seen[-1]["kwargs"]
    assert kw["load_format"] == "harness_dequant"
    assert kw["worker_extension_cls"] == "harness.backends.vllm_loader.HarnessWorkerExtension"
    with pytest.raises(BackendError, match="needs worker_extension_cls"):
        _backend({"worker_extension_cls": "mine.Ext"}, model=str(view))


def test_tensor_parallel_on_too_few_local_gpus_is_refused_before_vllm_starts(fake_vllm, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"tensor_parallel_size x pipeline_parallel_size = 4 GPUs, but this host "
                                          r"shows 1 .*distributed_executor_backend: ray"):
        _backend({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    with pytest.raises(ConfigError, match="start the backend with harness.backends.make_backend"):
        _backend({"data_parallel_size": 2})
    assert fake_vllm.seen == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    _backend({"tensor_parallel_size": 2})
    assert fake_vllm.seen[-1]["kwargs"]["tensor_parallel_size"] == 2


def test_the_ray_cluster_config_reaches_vllm_as_written(fake_vllm, monkeypatch, root):
    """Multi-host BF16 baseline (configs/qwen2.5-72b-instruct-ray.yaml): the head host may see fewer GPUs than the
    engine spans; Ray places the workers, so the harness passes the parallel layout through untouched."""
    from harness.backends import make_backend
    from harness.config.load import load_config

    cfg = load_config(root / "configs/qwen2.5-72b-instruct-ray.yaml")
    kw = cfg.engine_kwargs("bf16", "vllm")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the head's own two GPUs; the engine spans four
    make_backend("vllm", EngineSpec(model="Qwen/Qwen2.5-72B-Instruct", precision="bf16", max_model_len=2048,
                                    engine_kwargs=kw))
    got = fake_vllm.seen[-1]["kwargs"]
    assert (got["tensor_parallel_size"], got["pipeline_parallel_size"], got["distributed_executor_backend"]) == \
        (2, 2, "ray")
    assert cfg.engine_kwargs("nvfp4", "vllm").get("distributed_executor_backend") is None  # the gate needs no cluster


def _readings(monkeypatch, readings: list) -> list:
    from harness.backends import gpu_memory

    seen: list = []

    def used(indices=None):
        seen.append(readings[len(seen)])
        return seen[-1]

    monkeypatch.setattr(gpu_memory, "used_mib", used)
    return seen


@pytest.mark.parametrize("kwargs,env", [({"enforce_eager": False}, None),  # compiled: its core has its own process
                                        ({"tensor_parallel_size": 2}, "0")])  # core here, workers in their own
def test_close_returns_only_once_the_engines_processes_gave_its_gpu_memory_back(fake_vllm, monkeypatch, kwargs, env):
    if env is not None:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", env)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    seen = _readings(monkeypatch, [{0: 1000.0}, {0: 52000.0}, {0: 30000.0}, {0: 1100.0}])  # before, then shutting down
    eng = _backend(kwargs)
    assert len(seen) == 1  # measured before the engine started
    eng.close()
    assert len(seen) == 4  # not back before the fourth reading: close() waited for it


def test_an_in_process_engine_does_not_wait_for_what_this_process_keeps(fake_vllm, monkeypatch, caplog):
    """2026-11-30 on the H200: an engine whose core and model ran in this process left this process's CUDA context and
    vLLM's caches on the GPU (more than the 1 GiB tolerance at the 1.5B and 72B shapes); no other process could give
    them back, and close() waited out its 120 s timeout. It reads once and says what this process keeps."""
    seen = _readings(monkeypatch, [{0: 600.0}, {0: 2900.0}, {0: 600.0}])
    eng = _backend({})
    assert eng.info()["engine_core"] == "in this process"
    with caplog.at_level(logging.INFO, logger="harness"):
        eng.close()
    assert len(seen) == 2  # one reading after close, no waiting for the third
    assert "the bf16 engine ran in this process, which keeps {0: 2300} MiB per GPU" in caplog.text


def test_the_report_says_where_an_engine_start_went():
    """The start's parts as the engine log gave them: model load, weights, init engine with the torch.compile and
    CUDA-graph seconds inside it, the rest, and whether FlashInfer autotuned."""
    from harness.report.markdown import engine_lines

    log = "\n".join(LOG_LINES + ["torch.compile took 5.61 s in total", "Graph capturing finished in 2 secs, took 0.4 GiB",
                                 "Using FlashInfer autotune cache file: /c/autotune_configs.json"])
    rep = {"engine": {"engine_start_s": 60.0, "engine_start": parse_engine_log(log, total_s=60.0)}}
    (line,) = engine_lines(rep)
    assert line == ("- NVFP4 engine start: 60.0 s (model_load_s 12.5 s, weights_s 3.5 s, init_engine_s 8.2 s (of which "
                    "torch.compile 5.6 s, CUDA graphs 2.0 s), other_s 39.2 s, FlashInfer autotune on)")


@pytest.mark.parametrize("top_k", [0, 20, 30])
def test_the_start_ends_with_one_scoring_request_at_the_engines_top_k(fake_vllm, top_k):
    """vLLM's own warm-up compiles the prompt-logprobs kernel at another width (for_sampler_warmup: 1 + 1 ids);
    the harness's start scores a two-token prompt at its own top-k, and those seconds are part of the start."""
    from harness.backends.vllm import VLLMBackend

    fake_vllm.generate_s = 0.3
    t0 = time.time()
    eng = VLLMBackend(EngineSpec(model="m", precision="bf16", max_model_len=2048, top_k=top_k))
    took = time.time() - t0
    ((prompts, params),) = fake_vllm.requests  # one request, before the constructor returned
    assert prompts == [{"prompt_token_ids": [0, 1]}]
    assert params["prompt_logprobs"] == top_k and params["max_tokens"] == 1 and params["temperature"] == 0.0
    b = eng.info()["engine_start"]
    assert 0.3 <= b["logprobs_warm_up_s"] <= eng.engine_start_s <= took
    assert "logprobs_warm_up_error" not in b


def test_a_failed_warm_up_request_starts_the_engine_anyway_and_says_why(fake_vllm):
    from harness.backends.vllm import VLLMBackend

    fake_vllm.generate_error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    eng = VLLMBackend(EngineSpec(model="m", precision="bf16", max_model_len=2048))
    b = eng.info()["engine_start"]
    assert "logprobs_warm_up_s" not in b
    assert b["logprobs_warm_up_error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert eng.llm is not None


def test_the_warm_up_is_its_own_part_of_the_start_and_not_in_the_rest():
    """60 s in all: 12.5 s model load, 8.25 s init engine, 2.0 s warm-up -> 37.25 s for the rest."""
    from harness.report.markdown import engine_lines

    b = parse_engine_log("\n".join(LOG_LINES), total_s=60.0, warm_up_s=2.0)
    assert b["logprobs_warm_up_s"] == 2.0 and b["other_s"] == 37.25
    (line,) = engine_lines({"engine": {"engine_start_s": 60.0, "engine_start": b}})
    assert line == ("- NVFP4 engine start: 60.0 s (model_load_s 12.5 s, weights_s 3.5 s, init_engine_s 8.2 s, "
                    "prompt-logprobs warm-up 2.0 s, other_s 37.2 s)")
