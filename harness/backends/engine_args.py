"""Which engine kwargs each backend takes, checked when the config loads (no vllm or torch import).

``VLLM_ENGINE_ARGS`` are the fields of ``vllm.engine.arg_utils.EngineArgs`` in the pinned vLLM (0.26.0), read off
its source with ``ast`` (see ``tests/test_engine_args.py`` for the command); at engine start the backend checks
against the installed vLLM's own fields again. A key that is not a field is an error that names the closest ones.
"""
from __future__ import annotations

import difflib

from harness.backends import backend_spec, load_class
from harness.errors import ConfigError

VLLM_VERSION = "0.26.0"
VLLM_ENGINE_ARGS = frozenset("""
    additional_config aggregate_engine_logging all2all_backend allow_deprecated_quantization
    allowed_local_media_path allowed_media_domains async_scheduling attention_backend attention_config
    block_size calculate_kv_scales code_revision collect_detailed_traces compilation_config config_format
    convert cp_kv_cache_interleave_size cpu_distributed_timeout_seconds cpu_offload_gb cpu_offload_params
    cudagraph_capture_sizes cudagraph_metrics data_parallel_address data_parallel_backend
    data_parallel_external_lb data_parallel_hybrid_lb data_parallel_multi_port_external_lb data_parallel_rank
    data_parallel_rpc_port data_parallel_size data_parallel_size_local data_parallel_start_rank
    dbo_decode_token_threshold dbo_prefill_token_threshold dcp_comm_backend dcp_kv_cache_interleave_size
    decode_context_parallel_size default_mm_loras device_ids diffusion_config disable_cascade_attn
    disable_chunked_mm_input disable_custom_all_reduce disable_hybrid_kv_cache_manager disable_log_stats
    disable_nccl_for_dp_synchronization disable_sliding_window distributed_executor_backend
    distributed_timeout_seconds download_dir dtype ec_transfer_config enable_bf16x3_router_gemm
    enable_chunked_prefill enable_cumem_allocator enable_dbo enable_elastic_ep enable_ep_weight_filter
    enable_eplb enable_expert_parallel enable_flashinfer_autotune enable_layerwise_nvtx_tracing
    enable_logging_iteration_details enable_lora enable_mamba_cache_stochastic_rounding enable_mfu_metrics
    enable_mixed_moe_lora_format enable_mm_embeds enable_mm_processor_stats enable_moe_shared_loras
    enable_prefix_caching enable_prompt_embeds enable_return_routed_experts enable_sleep_mode
    enable_tower_connector_lora enforce_eager eplb_config expert_placement_strategy fail_on_environ_validation
    fully_sharded_loras gdn_prefill_backend generation_config gpu_memory_utilization hf_config_path hf_overrides
    hf_token ignore_patterns interleave_mm_strings io_processor_plugin ir_op_priority jit_monitor_mode
    jit_monitor_verbose kernel_config kv_cache_dtype kv_cache_dtype_skip_layers kv_cache_memory_bytes
    kv_cache_metrics kv_cache_metrics_sample kv_events_config kv_offloading_backend kv_offloading_size
    kv_sharing_fast_prefill kv_transfer_config language_model_only limit_mm_per_prompt linear_backend
    load_format logits_processors logprobs_mode long_prefill_token_threshold lora_dtype lora_target_modules
    mamba_backend mamba_block_size mamba_cache_dtype mamba_cache_mode mamba_cache_philox_rounds mamba_config
    mamba_ssm_cache_dtype master_addr master_port max_cpu_loras max_cudagraph_capture_size max_logprobs
    max_long_partial_prefills max_lora_rank max_loras max_model_len max_num_batched_tokens
    max_num_partial_prefills max_num_scheduled_tokens max_num_seqs max_parallel_loading_workers media_io_kwargs
    mm_encoder_attn_backend mm_encoder_attn_dtype mm_encoder_fp8_scale_path mm_encoder_fp8_scale_save_margin
    mm_encoder_fp8_scale_save_path mm_encoder_only mm_encoder_tp_mode mm_ipc_gpu_memory_gb mm_processor_cache_gb
    mm_processor_cache_type mm_processor_kwargs mm_shm_cache_max_object_size_mb mm_tensor_ipc model
    model_class_overrides model_impl model_loader_extra_config model_weights moe_backend nnodes node_rank
    num_gpu_blocks_override numa_bind numa_bind_cpus numa_bind_nodes offload_backend offload_group_size
    offload_num_in_group offload_params offload_prefetch_step optimization_level otlp_traces_endpoint
    override_attention_dtype override_generation_config performance_mode pipeline_parallel_size pooler_config
    prefill_context_parallel_size prefill_schedule_interval prefix_caching_hash_algo prefix_match_unit
    profiler_config pt_load_map_location quantization quantization_config ray_workers_use_nsight
    reasoning_config reasoning_parser reasoning_parser_plugin renderer_num_workers revision runner
    safetensors_load_strategy safetensors_prefetch_block_size safetensors_prefetch_num_threads scheduler_cls
    scheduler_reserve_full_isl scheduling_policy seed served_model_name show_hidden_metrics_for_version
    shutdown_timeout skip_mm_profiling skip_tokenizer_init spec_method spec_model spec_tokens
    specialize_active_lora speculative_config stream_interval structured_outputs_config tensor_parallel_size
    tokenizer tokenizer_mode tokenizer_revision tokens_only trust_remote_code ubatch_size use_fp64_gumbel
    use_tqdm_on_load video_pruning_rate watermark weight_transfer_config worker_cls worker_extension_cls
""".split())
# the scalar type of each EngineArgs field annotated plainly as bool, int, float or str (``?``: may also be None), read
# off vllm/engine/arg_utils.py of the vllm==0.26.0 wheel with ``ast`` (class EngineArgs: each ``name: T`` or
# ``name: T | None`` with T one of those four; private fields left out): a config's vLLM settings are
# checked against them when it loads, whichever backend the run uses (``gpu_memory_utilization: "abc"`` is refused on
# a CPU run too, not first on the GPU). Fields of other annotations (Literal aliases, configs) are left to vLLM.
VLLM_SCALAR_TYPES = dict(item.split(":") for item in """
    aggregate_engine_logging:bool allow_deprecated_quantization:bool
    allowed_local_media_path:str async_scheduling:bool? block_size:int? calculate_kv_scales:bool code_revision:str?
    config_format:str cp_kv_cache_interleave_size:int cpu_distributed_timeout_seconds:int? cpu_offload_gb:float
    cudagraph_metrics:bool data_parallel_address:str? data_parallel_external_lb:bool data_parallel_hybrid_lb:bool
    data_parallel_multi_port_external_lb:bool data_parallel_rank:int? data_parallel_rpc_port:int?
    data_parallel_size:int data_parallel_size_local:int? data_parallel_start_rank:int?
    dbo_decode_token_threshold:int dbo_prefill_token_threshold:int dcp_kv_cache_interleave_size:int
    decode_context_parallel_size:int disable_cascade_attn:bool disable_chunked_mm_input:bool
    disable_custom_all_reduce:bool disable_hybrid_kv_cache_manager:bool? disable_log_stats:bool
    disable_nccl_for_dp_synchronization:bool? disable_sliding_window:bool distributed_timeout_seconds:int?
    download_dir:str? enable_bf16x3_router_gemm:bool? enable_chunked_prefill:bool? enable_cumem_allocator:bool
    enable_dbo:bool enable_elastic_ep:bool enable_ep_weight_filter:bool enable_eplb:bool enable_expert_parallel:bool
    enable_flashinfer_autotune:bool enable_layerwise_nvtx_tracing:bool enable_logging_iteration_details:bool
    enable_lora:bool enable_mamba_cache_stochastic_rounding:bool enable_mfu_metrics:bool
    enable_mixed_moe_lora_format:bool enable_mm_embeds:bool enable_mm_processor_stats:bool
    enable_moe_shared_loras:bool enable_prefix_caching:bool? enable_prompt_embeds:bool
    enable_return_routed_experts:bool enable_sleep_mode:bool enable_tower_connector_lora:bool enforce_eager:bool
    fail_on_environ_validation:bool fully_sharded_loras:bool generation_config:str gpu_memory_utilization:float
    hf_config_path:str? interleave_mm_strings:bool io_processor_plugin:str? jit_monitor_verbose:bool
    kv_cache_memory_bytes:int? kv_cache_metrics:bool kv_cache_metrics_sample:float kv_offloading_size:float?
    kv_sharing_fast_prefill:bool language_model_only:bool long_prefill_token_threshold:int mamba_block_size:int?
    mamba_cache_philox_rounds:int master_addr:str master_port:int max_cpu_loras:int? max_cudagraph_capture_size:int?
    max_logprobs:int max_long_partial_prefills:int max_loras:int max_model_len:int max_num_batched_tokens:int?
    max_num_partial_prefills:int max_num_scheduled_tokens:int? max_num_seqs:int? max_parallel_loading_workers:int?
    mm_encoder_attn_dtype:str? mm_encoder_fp8_scale_path:str? mm_encoder_fp8_scale_save_margin:float
    mm_encoder_fp8_scale_save_path:str? mm_encoder_only:bool mm_ipc_gpu_memory_gb:float mm_processor_cache_gb:float
    mm_shm_cache_max_object_size_mb:int model:str model_impl:str model_weights:str nnodes:int node_rank:int
    num_gpu_blocks_override:int? numa_bind:bool offload_backend:str offload_group_size:int offload_num_in_group:int
    offload_prefetch_step:int otlp_traces_endpoint:str? override_attention_dtype:str? pipeline_parallel_size:int
    prefill_context_parallel_size:int prefill_schedule_interval:int prefix_match_unit:int?
    ray_workers_use_nsight:bool reasoning_parser:str reasoning_parser_plugin:str? renderer_num_workers:int
    revision:str? safetensors_prefetch_block_size:int safetensors_prefetch_num_threads:int
    scheduler_reserve_full_isl:bool seed:int show_hidden_metrics_for_version:str? shutdown_timeout:int
    skip_mm_profiling:bool skip_tokenizer_init:bool spec_method:str? spec_model:str? spec_tokens:int?
    specialize_active_lora:bool stream_interval:int tensor_parallel_size:int tokenizer:str? tokenizer_revision:str?
    tokens_only:bool trust_remote_code:bool ubatch_size:int use_fp64_gumbel:bool use_tqdm_on_load:bool
    video_pruning_rate:float? watermark:float worker_cls:str worker_extension_cls:str
""".split())
# the EngineArgs fields of vLLM 0.26.0 typed as a Literal (directly or through an alias in vllm/config/*.py: ModelDType,
# CacheDType, LinearBackend, ...), read off the wheel's source with ast: field -> (the values it takes, None allowed)
VLLM_CHOICES = {
    'all2all_backend': (('naive', 'pplx', 'deepep_high_throughput', 'deepep_low_latency', 'deepep_v2',
                         'mori_high_throughput', 'mori_low_latency', 'nixl_ep', 'allgather_reducescatter',
                         'flashinfer_all2allv', 'flashinfer_nvlink_two_sided', 'flashinfer_nvlink_one_sided'), False),
    'data_parallel_backend': (('ray', 'mp'), False),
    'dcp_comm_backend': (('ag_rs', 'a2a'), False),
    'dtype': (('auto', 'half', 'float16', 'bfloat16', 'float', 'float32'), False),
    'expert_placement_strategy': (('linear', 'round_robin'), False),
    'gdn_prefill_backend': (('flashinfer', 'triton', 'cutedsl'), True),
    'jit_monitor_mode': (('warn', 'error'), False),
    'kv_cache_dtype': (('auto', 'float16', 'bfloat16', 'fp8', 'fp8_e4m3', 'fp8_e5m2', 'fp8_inc', 'fp8_ds_mla',
                        'turboquant_k8v4', 'turboquant_4bit_nc', 'turboquant_k3v4_nc', 'turboquant_3bit_nc',
                        'int4_per_token_head', 'int8_per_token_head', 'fp8_per_token_head', 'nvfp4'), False),
    'kv_offloading_backend': (('native', 'lmcache'), False),
    'linear_backend': (('auto', 'cutlass', 'flashinfer_cutlass', 'flashinfer_cutedsl', 'flashinfer_trtllm',
                        'flashinfer_cudnn', 'flashinfer_b12x', 'marlin', 'humming', 'triton', 'deep_gemm', 'torch',
                        'aiter', 'machete', 'fbgemm', 'conch', 'exllama', 'emulation', 'xpu', 'xpu_woq'), False),
    'logprobs_mode': (('raw_logits', 'raw_logprobs', 'processed_logits', 'processed_logprobs'), False),
    'mamba_cache_dtype': (('auto', 'float32', 'float16', 'bfloat16'), False),
    'mamba_cache_mode': (('all', 'align', 'none'), False),
    'mamba_ssm_cache_dtype': (('auto', 'float32', 'float16', 'bfloat16'), False),
    'max_lora_rank': ((1, 8, 16, 32, 64, 128, 256, 320, 512), False),
    'mm_encoder_tp_mode': (('weights', 'data'), False),
    'mm_processor_cache_type': (('shm', 'lru'), True),
    'mm_tensor_ipc': (('direct_rpc', 'torch_shm'), False),
    'moe_backend': (('auto', 'triton', 'deep_gemm', 'deep_gemm_mega_moe', 'cutlass', 'flashinfer_trtllm',
                     'flashinfer_cutlass', 'flashinfer_cutedsl', 'flashinfer_b12x', 'marlin', 'humming',
                     'triton_unfused', 'aiter', 'flydsl', 'hpc', 'emulation'), False),
    'performance_mode': (('balanced', 'interactivity', 'throughput'), False),
    'prefix_caching_hash_algo': (('sha256', 'sha256_cbor', 'xxhash', 'xxhash_cbor'), False),
    'safetensors_load_strategy': (('lazy', 'eager', 'prefetch', 'torchao'), True),
    'scheduling_policy': (('fcfs', 'priority'), False),
}
# keys the harness accepts although this vLLM dropped them (reference settings): removed with a note in the engine info
VLLM_DROPPED = frozenset({"swap_space"})
# set by the harness from the config (model.path, model.max_model_len, ...): refused in model.engine
HARNESS_OWNED = frozenset({"model", "tokenizer", "revision", "max_model_len"})
# the hf backend's settings and the type each must have (checked when the config loads, not when the engine starts)
HF_TYPES = {"device": str, "dtype": str, "batch_tokens": int, "attn_implementation": str, "trust_remote_code": bool,
            "threads": int, "cpu_matmul": str}
HF_KWARGS = frozenset(HF_TYPES)
HF_DTYPES = ("bfloat16", "float16", "float32")
HF_CPU_MATMUL = ("fp32", "native")  # harness/backends/cpu_matmul.py (kept torch-free here)


def check_engine_kwargs(backend: str, kwargs: dict, where: str = "engine", fields=None) -> None:
    """Refuse unknown, misspelled, harness-owned and wrong-typed keys, by the backend's own check (its BackendSpec)."""
    load_class(backend_spec(backend).check_kwargs)(kwargs, where, fields)


def check_vllm_kwargs(kwargs: dict, where: str, fields=None) -> None:
    """Fields of vLLM's EngineArgs (the pinned version's, or ``fields`` read off the installed one), minus the keys
    the harness sets itself."""
    owned = sorted(set(kwargs) & HARNESS_OWNED)
    if owned:
        raise ConfigError(f"{where}: {owned} are set by the harness (model.path, model.max_model_len, ...); "
                          "remove them from model.engine")
    valid = ((fields if fields is not None else VLLM_ENGINE_ARGS) | VLLM_DROPPED) - HARNESS_OWNED
    source = f"vLLM {VLLM_VERSION} EngineArgs" if fields is None else "the installed vLLM's EngineArgs"
    _refuse_unknown("vllm", kwargs, valid, where, source)
    check_vllm_types(kwargs, where)


def check_vllm_types(kwargs: dict, where: str) -> None:
    """Each setting whose vLLM field is a plain bool / int / float / str of that type (an int passes for a float; a bool
    is not an int; ``None`` only where the field allows it)."""
    names = {"bool": bool, "int": int, "float": float, "str": str}
    for k, v in kwargs.items():
        if k in VLLM_CHOICES:
            allowed, optional = VLLM_CHOICES[k]
            if v in allowed or (v is None and optional):
                continue
            near = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1)
            raise ConfigError(f"{where}.{k}: vLLM {VLLM_VERSION} takes one of {', '.join(map(repr, allowed))}"
                              + (" or null" if optional else "") + f"; got {v!r}"
                              + (f" (did you mean {near[0]!r}?)" if near else ""))
        want = VLLM_SCALAR_TYPES.get(k)
        if want is None:
            continue
        base, optional = want.rstrip("?"), want.endswith("?")
        if v is None and optional:
            continue
        t = names[base]
        ok = isinstance(v, t) and not (t in (int, float) and isinstance(v, bool))
        ok = ok or (t is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{where}.{k}: vLLM {VLLM_VERSION} takes {base}" + (" or null" if optional else "")
                              + f", got {v!r} ({type(v).__name__})")


def check_hf_kwargs(kwargs: dict, where: str, fields=None) -> None:
    _refuse_unknown("hf", kwargs, HF_KWARGS, where, "the hf backend")
    check_hf_types(kwargs, where)


LIST_ALL_UP_TO = 12  # a backend with at most this many settings has them all in the message; more: the nearest five


def _refuse_unknown(backend: str, kwargs: dict, valid, where: str, source: str) -> None:
    """For each unknown key the closest valid ones; then every valid key where they are few (hf), else the five
    nearest and where the whole list lives (vLLM's ~250 on one line buried the hint)."""
    bad = sorted(k for k in kwargs if k not in valid)
    if not bad:
        return
    valid = sorted(valid)
    hints = []
    for k in bad:
        close = difflib.get_close_matches(k, valid, n=3, cutoff=0.6)
        hints.append(f"{k!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    head = f"{where}: unknown {backend} engine kwarg(s) {', '.join(hints)}."
    if len(valid) <= LIST_ALL_UP_TO:
        raise ConfigError(f"{head} Valid keys ({source}): {', '.join(valid)}")
    near = difflib.get_close_matches(bad[0], valid, n=5, cutoff=0.0)
    raise ConfigError(f"{head} Nearest valid keys ({source}): {', '.join(near)}; all {len(valid)}: the fields of "
                      "vllm.engine.arg_utils.EngineArgs (python -c \"import dataclasses, vllm.engine.arg_utils as a; "
                      "print(*[f.name for f in dataclasses.fields(a.EngineArgs)])\")")


def check_hf_types(kwargs: dict, where: str) -> None:
    """Each hf setting of its type (``threads: "two"`` is refused here, not by torch at engine start)."""
    for k, v in kwargs.items():
        want = HF_TYPES[k]
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{where}.{k}: expected {want.__name__}, got {v!r} ({type(v).__name__})")
        if want is int and v < 1:
            raise ConfigError(f"{where}.{k}: must be at least 1, got {v}")
    if "dtype" in kwargs and kwargs["dtype"] not in HF_DTYPES:
        raise ConfigError(f"{where}.dtype: {kwargs['dtype']!r} is not one of {', '.join(HF_DTYPES)}")
    if "cpu_matmul" in kwargs and kwargs["cpu_matmul"] not in HF_CPU_MATMUL:
        raise ConfigError(f"{where}.cpu_matmul: {kwargs['cpu_matmul']!r} is not one of {', '.join(HF_CPU_MATMUL)} "
                          "(fp32: bf16 linear layers computed in float32 on the CPU, native: torch's bf16 kernel)")
