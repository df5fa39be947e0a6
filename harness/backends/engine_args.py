"""Which engine kwargs each backend takes, checked when the config loads (no vllm or torch import).

``VLLM_ENGINE_ARGS`` are the fields of ``vllm.engine.arg_utils.EngineArgs`` in the pinned vLLM (0.26.0), read off
its source with ``ast`` (see ``tests/test_engine_args.py`` for the command); at engine start the backend checks
against the installed vLLM's own fields again. A key that is not a field is an error that names the closest ones.
"""
from __future__ import annotations

import difflib

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
# keys the harness accepts although this vLLM dropped them (reference settings): removed with a note in the engine info
VLLM_DROPPED = frozenset({"swap_space"})
# set by the harness from the config (model.path, model.max_model_len, ...): refused in model.engine
HARNESS_OWNED = frozenset({"model", "tokenizer", "revision", "max_model_len", "enable_prefix_caching"})
# the hf backend's settings and the type each must have (checked when the config loads, not when the engine starts)
HF_TYPES = {"device": str, "dtype": str, "batch_tokens": int, "attn_implementation": str, "trust_remote_code": bool,
            "threads": int, "cpu_matmul": str}
HF_KWARGS = frozenset(HF_TYPES)
HF_DTYPES = ("bfloat16", "float16", "float32")
HF_CPU_MATMUL = ("fp32", "native")  # harness/backends/cpu_matmul.py (kept torch-free here)


def check_engine_kwargs(backend: str, kwargs: dict, where: str = "engine", fields=None) -> None:
    """Refuse unknown, misspelled, harness-owned and wrong-typed keys, by the backend's own check (its BackendSpec)."""
    from harness.backends import backend_spec, load_class

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


def check_hf_kwargs(kwargs: dict, where: str, fields=None) -> None:
    _refuse_unknown("hf", kwargs, HF_KWARGS, where, "the hf backend")
    check_hf_types(kwargs, where)


def _refuse_unknown(backend: str, kwargs: dict, valid, where: str, source: str) -> None:
    """The message lists, for each unknown key, the closest valid ones, then every valid key."""
    bad = sorted(k for k in kwargs if k not in valid)
    if not bad:
        return
    hints = []
    for k in bad:
        close = difflib.get_close_matches(k, sorted(valid), n=3, cutoff=0.6)
        hints.append(f"{k!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    raise ConfigError(f"{where}: unknown {backend} engine kwarg(s) {', '.join(hints)}. Valid keys ({source}): "
                      f"{', '.join(sorted(valid))}")


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
