"""Synthetic checkpoints at a real model's shape: size the hardware and time a gate before downloading the weights.

``harness synth-checkpoint --like Qwen/Qwen2.5-72B-Instruct --precision nvfp4 OUT`` writes a checkpoint with the
model's exact tensor names and shapes (from its ``config.json``) and seeded random weights:

- every weight is drawn from N(0, std^2) (norm weights are 1), one generator per tensor seeded from (seed, name);
- ``--precision nvfp4``: each Linear the NVFP4 scheme targets (all but ``lm_head``) is quantized like llm-compressor
  does it and written in compressed-tensors' ``nvfp4-pack-quantized`` layout: ``weight_packed`` (uint8, two FP4 E2M1
  codes per byte, low nibble first), ``weight_scale`` (FP8 E4M3 per 16 inputs: group amax / 6 x global scale),
  ``weight_global_scale`` (FP32, 448 x 6 / tensor amax) and ``input_global_scale`` (FP32, 448 x 6 / ``act_amax``).
  Scales are sane by construction, so vLLM's logprobs are finite (``load_format="dummy"`` gives NaN under Marlin);
- ``--layout modelopt``: the same NVFP4 numbers in NVIDIA ModelOpt's layout instead (``weight`` packed uint8,
  ``weight_scale`` FP8, ``weight_scale_2`` = 1 / global scale, ``input_scale`` = 1 / input global scale, and an
  ``hf_quant_config.json``), as compressed-tensors' own ModelOpt converter maps the two;
- ``--precision bf16``: the same Gaussian weights in BF16 (to quantize with a real recipe);
- ``--bf16-view DIR`` (with nvfp4): a BF16 model whose weights are exactly the NVFP4 checkpoint's dequantization,
  with no weights of its own on disk: the vLLM backend loads it with the ``harness_dequant`` load format (see
  harness/backends/vllm_loader.py), the hf backend by dequantizing in memory. Against it, Marlin W4A16 scores
  ~100 (same weights, 16-bit activations) and emulation W4A4 shows the cost of quantizing activations alone.

The numbers a synthetic checkpoint gives are about speed and memory, not quality: its perplexity is that of a
random model. Everything is written to a temp dir beside OUT and renamed into place, so a failed run leaves nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.models.shapes import KNOWN_SHAPES
from harness.reference.pack import FP4_MAX, FP8_MAX, GROUP, quantize_nvfp4

SYNTH_FILE = "harness_synth.json"
# Linear layers that vLLM runs as one fused GEMM share one global scale (llm-compressor fuses their observers the
# same way); vLLM keeps a single global scale per fused layer, so unequal ones would change the numbers.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True)
class SynthSpec:
    config: dict                 # the shape's config.json (no quantization_config)
    precision: str = "nvfp4"     # "nvfp4" or "bf16"
    seed: int = 0
    std: float = 0.02
    act_amax: float = 64.0       # activation range the input global scale is set for (W4A4 only)
    like: str = ""               # where the shape came from
    ignore: tuple[str, ...] = ("lm_head",)
    layout: str = "compressed-tensors"  # or "modelopt" (NVFP4 only)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    kind: str                    # "linear" (quantized under nvfp4), "norm" (ones) or "dense"


def resolve_shape(like: str, revision: str | None = None) -> tuple[dict, str]:
    """The shape's config.json: a local config.json or model dir, a known hub id (offline), else the hub."""
    p = Path(os.path.expanduser(like))
    if p.is_file() or (p / "config.json").is_file():
        f = p if p.is_file() else p / "config.json"
        try:
            cfg = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise HarnessError(f"--like {like}: {f} is not valid JSON ({e})") from None
        source = str(f)
    elif like in KNOWN_SHAPES:
        cfg, source = dict(KNOWN_SHAPES[like]), f"{like} (harness.models.shapes)"
    else:
        try:
            from huggingface_hub import hf_hub_download

            f = hf_hub_download(like, "config.json", revision=revision)
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated repo: all say the same to the user
            raise HarnessError(f"--like {like!r}: no such local config.json or model dir, not a known shape "
                               f"({', '.join(KNOWN_SHAPES)}), and the hub gave no config.json "
                               f"({type(e).__name__}: {str(e)[:200]}); pass the path of a config.json") from None
        cfg, source = json.loads(Path(f).read_text()), f"{like}@{revision or 'main'} (hub)"
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise HarnessError(f"--like {like}: {source} has no model_type; is it a transformers config.json?")
    cfg.pop("quantization_config", None)
    return cfg, source


def tensor_plan(config: dict, ignore: tuple[str, ...] = ("lm_head",)) -> list[TensorPlan]:
    """Every tensor of the model, in state-dict order, from a meta-device instance (no memory, any architecture)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        cfg = AutoConfig.for_model(config["model_type"], **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise HarnessError(f"transformers cannot build a {config.get('model_type')!r} model from this config: {e}") \
            from None
    modules = dict(model.named_modules())
    tied = bool(getattr(cfg.get_text_config(), "tie_word_embeddings", False))
    plan = []
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # shared with the embedding: stored once, as transformers does
        mod_name, _, leaf = name.rpartition(".")
        mod = modules.get(mod_name)
        if isinstance(mod, torch.nn.Linear) and leaf == "weight" and not _ignored(mod_name, ignore):
            if t.shape[-1] % GROUP:
                raise HarnessError(f"{mod_name}: in_features {t.shape[-1]} is not a multiple of {GROUP}; NVFP4 "
                                   "quantizes groups of 16 inputs (add the module to ignore)")
            kind = "linear"
        elif leaf == "weight" and t.ndim == 1 and "norm" in type(mod).__name__.lower():
            kind = "norm"
        else:
            kind = "dense"
        plan.append(TensorPlan(name, tuple(t.shape), kind))
    return plan


def _ignored(module: str, ignore: tuple[str, ...]) -> bool:
    return any(module == i or module.endswith("." + i) for i in ignore)


def nbytes(plan: list[TensorPlan], precision: str) -> int:
    """Bytes the checkpoint's tensors take on disk."""
    total = 0
    for p in plan:
        n = 1
        for d in p.shape:
            n *= d
        total += n // 2 + n // GROUP + 8 if (precision == "nvfp4" and p.kind == "linear") else 2 * n
    return total


def _generator(seed: int, name: str, device):
    import torch

    h = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)
    g = torch.Generator(device=device)
    g.manual_seed(h)
    return g


def _gaussian(name: str, shape, spec: SynthSpec, device):
    import torch

    w = torch.randn(shape, generator=_generator(spec.seed, name, device), device=device, dtype=torch.float32)
    return w.mul_(spec.std)


def fused_siblings(name: str, plan_names: set[str]) -> list[str]:
    """Weight names of the Linear layers fused with ``name``'s (itself included), as vLLM fuses them."""
    mod, _, leaf = name.rpartition(".")
    parent, _, proj = mod.rpartition(".")
    for group in FUSED:
        if proj in group:
            return [n for n in (f"{parent}.{g}.{leaf}" for g in group) if n in plan_names]
    return [name]


def synth_tensors(p: TensorPlan, spec: SynthSpec, device, plan: list[TensorPlan] | None = None,
                  global_scales: dict | None = None) -> dict:
    """The checkpoint tensors for one planned tensor (four for an NVFP4-quantized Linear weight). Fused siblings
    (q/k/v, gate/up) get one global scale, from their largest amax; ``global_scales`` caches it per group."""
    import torch

    if p.kind == "norm":
        return {p.name: torch.ones(p.shape, dtype=torch.bfloat16, device=device)}
    w = _gaussian(p.name, p.shape, spec, device)
    if p.kind != "linear" or spec.precision != "nvfp4":
        return {p.name: w.to(torch.bfloat16)}
    shapes = {q.name: q.shape for q in (plan or [p])}
    group = tuple(fused_siblings(p.name, set(shapes)))
    cache = global_scales if global_scales is not None else {}
    if group not in cache:
        amax = max(w.abs().amax().item() if n == p.name else _gaussian(n, shapes[n], spec, device).abs().amax().item()
                   for n in group)
        cache[group] = torch.tensor([FP8_MAX * FP4_MAX / max(amax, 1e-30)], dtype=torch.float32, device=device)
    packed, scale, global_scale = quantize_nvfp4(w, cache[group])
    mod = p.name.rpartition(".")[0]
    input_global = torch.tensor([FP8_MAX * FP4_MAX / spec.act_amax], dtype=torch.float32, device=device)
    if spec.layout == "modelopt":  # ModelOpt stores the reciprocals, as 0-d tensors
        return {f"{mod}.weight": packed, f"{mod}.weight_scale": scale,
                f"{mod}.weight_scale_2": (1.0 / global_scale).reshape(()), f"{mod}.input_scale": (1.0 / input_global).reshape(())}
    return {f"{mod}.weight_packed": packed, f"{mod}.weight_scale": scale, f"{mod}.weight_global_scale": global_scale,
            f"{mod}.input_global_scale": input_global}


def quantization_config(spec: SynthSpec) -> dict:
    """compressed-tensors' NVFP4 preset, as llm-compressor writes it (W4A4, group 16, FP8 scales)."""
    args = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": GROUP, "strategy": "tensor_group",
            "dynamic": False, "scale_dtype": "torch.float8_e4m3fn", "zp_dtype": None, "actorder": None,
            "block_structure": None, "observer": "memoryless_minmax", "observer_kwargs": {}}
    return {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "quantization_status": "compressed",
            "ignore": list(spec.ignore), "kv_cache_scheme": None, "sparsity_config": {}, "transform_config": {},
            "global_compression_ratio": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized", "weights": args,
                                          "input_activations": {**args, "dynamic": "local",
                                                                "observer": "static_minmax"},
                                          "output_activations": None}}}


def modelopt_quant_config(spec: SynthSpec) -> dict:
    """ModelOpt's ``hf_quant_config.json`` for NVFP4 (the layout of NVIDIA's FP4 checkpoints on the hub)."""
    return {"producer": {"name": "modelopt", "version": "harness-synth"},
            "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": GROUP,
                             "exclude_modules": list(spec.ignore)}}
