"""Data-parallel scoring (harness/backends/data_parallel.py) on CPU, with a stand-in backend in real spawned worker
processes: how documents are shared out and merged back, GPU planning, and failures that stop every worker."""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import signal
import time

import pytest

from harness.backends import BACKENDS, EngineSpec, make_backend
from harness.backends.data_parallel import DataParallelBackend, merge, plan_devices, shard
from harness.backends.base import DocResult
from harness.errors import BackendError, ConfigError

FAKE = "dp_fakes:EchoBackend"


def _spec(**kw) -> EngineSpec:
    return EngineSpec(model="m", precision="bf16", max_model_len=64, engine_kwargs=kw)


def test_shard_gives_the_longest_documents_to_the_least_loaded_shard():
    # by hand: 10 -> A(10); 9 -> B(9); 8 -> B(17); then the three 1s -> A (11, 12, 13)
    assert shard([10, 9, 8, 1, 1, 1], 2) == [[0, 3, 4, 5], [1, 2]]
    assert shard([5, 5, 5], 3) == [[0], [1], [2]]
    assert shard([3], 2) == [[0], []]


def test_merge_restores_document_order_and_refuses_gaps_and_doubles():
    r = [DocResult(logprob_sum=-float(i), n_tokens=i) for i in range(4)]
    assert merge(4, [[1, 3], [0, 2]], [[r[1], r[3]], [r[0], r[2]]]) == r
    with pytest.raises(BackendError, match=r"documents \[3\] were not scored"):
        merge(4, [[1], [0, 2]], [[r[1]], [r[0], r[2]]])
    with pytest.raises(BackendError, match="document 1 was scored twice"):
        merge(2, [[1], [1]], [[r[1]], [r[1]]])


def test_plan_devices_cuts_the_visible_gpus_into_engine_groups():
    assert plan_devices(2, 1, ["0", "1"]) == ["0", "1"]
    assert plan_devices(2, 2, ["4", "5", "6", "7"]) == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match=r"needs 4 GPUs, but 2 are visible.*Lower data_parallel_size"):
        plan_devices(2, 2, ["0", "1"])


def test_two_workers_score_shards_on_their_own_gpus_and_merge_in_document_order(tmp_path):
    docs = [[7] + [i] * n for i, n in enumerate([40, 3, 25, 8, 30, 1, 12])]
    for k, d in enumerate(docs):
        d[0] = 100 + k  # first token: which document (never scored)
    be = DataParallelBackend(_spec(data_parallel_size=2, trace_dir=str(tmp_path)), FAKE, 2, ["0", "1"])
    try:
        res = be.loglikelihood_rolling(docs, token_logprobs=True)
        info = be.info()
    finally:
        be.close()
    for d, r in zip(docs, res):  # -sum(log(1 + t)) over the tokens after the first, by hand
        assert r.n_tokens == len(d) - 1
        assert r.logprob_sum == pytest.approx(-(len(d) - 1) * math.log1p(d[1]), rel=1e-12)
        assert len(r.token_logprobs) == len(d) - 1
    seen = {p.name: [int(x) for x in p.read_text().split()] for p in tmp_path.iterdir()}
    assert sorted(seen) == ["gpu0.txt", "gpu1.txt"]                         # each engine saw only its GPU
    assert sorted(seen["gpu0.txt"] + seen["gpu1.txt"]) == [100 + k for k in range(7)]  # every document once
    tokens = {g: sum(len(docs[x - 100]) for x in xs) for g, xs in seen.items()}
    assert abs(tokens["gpu0.txt"] - tokens["gpu1.txt"]) <= 12               # balanced by length, not by count
    assert info["data_parallel"]["size"] == 2 and info["data_parallel"]["devices"] == ["0", "1"]
    assert info["data_parallel"]["device_names"] == ["fake:0", "fake:1"]
    assert "data_parallel_size" in info["engine_kwargs"]
    assert not [p for p in mp.active_children() if p.name.startswith("harness-dp")]  # closed: no worker left
    assert be.exitcodes == [0, 0]  # each closed its engine and exited on its own


def test_top_k_distributions_cross_the_worker_pipes_in_document_order():
    docs = [[1, 5, 6], [2, 9], [3, 4, 4, 4]]
    be = DataParallelBackend(_spec(data_parallel_size=2), FAKE, 2, ["0", "1"])
    try:
        res = be.loglikelihood_rolling(docs, top_k=3)
    finally:
        be.close()
    for d, r in zip(docs, res):
        assert r.top_ids.tolist() == [[t, t + 1, t + 2] for t in d[1:]]
        assert r.top_logprobs[:, 0].tolist() == pytest.approx([-math.log1p(t) for t in d[1:]])


def test_a_worker_that_cannot_start_stops_all_of_them_and_says_which_gpu():
    with pytest.raises(BackendError, match=r"engine 1 of 2 \(GPUs 1\): RuntimeError: CUDA out of memory on 1"):
        DataParallelBackend(_spec(data_parallel_size=2, fail_on="1"), FAKE, 2, ["0", "1"])
    assert not [p for p in mp.active_children() if p.name.startswith("harness-dp")]


def test_a_worker_that_dies_while_scoring_is_an_error_not_a_hang():
    be = DataParallelBackend(_spec(data_parallel_size=2), FAKE, 2, ["0", "1"])
    with pytest.raises(BackendError, match=r"died with exit code 3"):
        be.loglikelihood_rolling([[1, 2, 3], [1, 999999, 2]])
    assert not [p for p in mp.active_children() if p.name.startswith("harness-dp")]
    with pytest.raises(BackendError, match="closed"):
        be.loglikelihood_rolling([[1, 2]])


def test_a_worker_that_closed_its_engine_but_does_not_exit_is_stopped_after_a_grace(monkeypatch):
    """2026-11-30 on two H200s: each worker closed its engine, then its interpreter did not exit, and close() waited out
    its whole 120 s deadline. Now the deadline is for closing the engines; exiting gets EXIT_GRACE_S, then a stop."""
    from harness.backends import data_parallel

    monkeypatch.setattr(data_parallel, "EXIT_GRACE_S", 1.0)
    be = DataParallelBackend(_spec(data_parallel_size=2, linger=True), FAKE, 2, ["0", "1"])
    procs = list(be._procs)
    t0 = time.monotonic()
    be.close()
    took = time.monotonic() - t0
    assert [p.exitcode for p in procs] == be.exitcodes == [-signal.SIGTERM] * 2  # stopped, not exited on their own
    assert took < data_parallel.CLOSE_TIMEOUT_S / 2, took  # 2 x (grace + stop), far from the 120 s deadline
    assert not [p for p in mp.active_children() if p.name.startswith("harness-dp")]


def test_close_waits_for_the_workers_gpu_memory_after_they_exit(monkeypatch):
    from harness.backends import data_parallel, gpu_memory

    readings = iter([{0: 500.0, 1: 400.0}, {0: 40000.0, 1: 400.0}, {0: 600.0, 1: 450.0}])  # before, then after exits
    seen = []
    read = lambda idx=None: seen.append(idx) or next(readings)  # noqa: E731
    monkeypatch.setattr(gpu_memory, "used_mib", read)  # wait_closed's reads
    monkeypatch.setattr(data_parallel, "used_mib", read)  # the one before the workers start
    be = DataParallelBackend(_spec(data_parallel_size=2), FAKE, 2, ["0", "1"])
    be.close()
    assert seen == [[0, 1]] * 3  # the workers' GPUs, read before they started and until they were back


def test_make_backend_plans_gpus_before_starting_anything(monkeypatch):
    monkeypatch.setitem(BACKENDS, "vllm", dataclasses.replace(BACKENDS["vllm"], cls=FAKE))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    be = make_backend("vllm", _spec(data_parallel_size=2))
    try:
        assert be.info()["data_parallel"]["device_names"] == ["fake:2", "fake:3"]
        assert be.loglikelihood_rolling([[5, 1]])[0].logprob_sum == pytest.approx(-math.log(2))
    finally:
        be.close()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"data_parallel_size 2 x 1 GPU\(s\) per engine .* needs 2 GPUs, but 1"):
        make_backend("vllm", _spec(data_parallel_size=2))
    with pytest.raises(ConfigError, match="does not combine with distributed_executor_backend 'ray'"):
        make_backend("vllm", _spec(data_parallel_size=2, distributed_executor_backend="ray"))
    with pytest.raises(ConfigError, match=r"data_parallel_size must be a whole number >= 1, got 0"):
        make_backend("vllm", _spec(data_parallel_size=0))
    assert not [p for p in mp.active_children() if p.name.startswith("harness-dp")]


def test_the_report_says_how_the_engines_were_spread_over_gpus():
    from harness.report.markdown import engine_lines

    rep = {"engine": {"engine_start_s": 61.0, "engine_kwargs": {"data_parallel_size": 2},
                      "data_parallel": {"size": 2, "devices": ["0", "1"]}},
           "bf16_engine": {"engine_start_s": 90.0, "engine_kwargs": {"tensor_parallel_size": 2,
                                                                     "pipeline_parallel_size": 2,
                                                                     "distributed_executor_backend": "ray"}}}
    nv, bf = engine_lines(rep)
    assert nv == ("- NVFP4 engine start: 61.0 s; data parallel: 2 engines (GPUs 0 | 1), each scoring a share of the "
                  "documents")
    assert bf == "- BF16 (baseline run) engine start: 90.0 s; tensor x pipeline parallel 2 x 2 (ray)"
