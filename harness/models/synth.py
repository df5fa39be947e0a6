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
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from harness.atomic import atomic_dir
from harness.quant.checkpoint import VIEW_FILE
from harness.errors import HarnessError
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
    from harness.models.shapes import KNOWN_SHAPES

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


def write_checkpoint(spec: SynthSpec, out: Path, *, tokenizer: str | None = None, shard_gb: float = 5.0,
                     device: str = "auto", force: bool = False, progress: bool = True) -> dict:
    """Write the synthetic checkpoint to ``out`` (atomically); returns what was written."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    if spec.precision not in ("nvfp4", "bf16"):
        raise HarnessError(f"precision {spec.precision!r}: choose nvfp4 or bf16")
    if spec.layout not in ("compressed-tensors", "modelopt") or (spec.layout == "modelopt" and spec.precision != "nvfp4"):
        raise HarnessError(f"layout {spec.layout!r}: choose compressed-tensors, or modelopt with precision nvfp4")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    plan = tensor_plan(spec.config, spec.ignore)
    total = nbytes(plan, spec.precision)
    out = Path(out)
    _check_output(out, total, force)
    t0 = time.time()
    shards: list[list[str]] = []
    current: dict = {}
    size = 0
    with atomic_dir(out, prefix=".", on_exists="replace") as tmp:  # a replaced one goes once the new one is there
        def flush() -> None:
            nonlocal current, size
            if current:
                save_file(current, tmp / f"shard-{len(shards):05d}.safetensors", metadata={"format": "pt"})
                shards.append(list(current))
                current, size = {}, 0

        with tqdm(total=total, unit="B", unit_scale=True, desc=f"synth {spec.precision} {out.name}",
                  disable=not progress, mininterval=2.0) as bar:
            global_scales: dict = {}
            for p in plan:
                for name, t in synth_tensors(p, spec, dev, plan, global_scales).items():
                    current[name] = t.contiguous().cpu()
                    b = t.numel() * t.element_size()
                    size += b
                    bar.update(b)
                if size >= shard_gb * 2**30:
                    flush()
            flush()
        _name_shards(tmp, shards)
        cfg = {**spec.config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}
        if spec.precision == "nvfp4" and spec.layout == "modelopt":
            (tmp / "hf_quant_config.json").write_text(json.dumps(modelopt_quant_config(spec), indent=1) + "\n")
        elif spec.precision == "nvfp4":
            cfg["quantization_config"] = quantization_config(spec)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        tok = _save_tokenizer(tokenizer, tmp)
        info = {"synthetic": True, **{k: v for k, v in asdict(spec).items() if k != "config"},
                "tensors": sum(len(s) for s in shards), "shards": len(shards), "bytes": total,
                "params": sum(_numel(p.shape) for p in plan), "tokenizer": tok, "device": str(dev),
                "seconds": round(time.time() - t0, 1)}
        (tmp / SYNTH_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return {"path": str(out), **info}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_output(out: Path, need_bytes: int, force: bool) -> None:
    if out.exists() and not force:
        raise HarnessError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < need_bytes + (256 << 20):
        raise HarnessError(f"{out}: needs {need_bytes / 2**30:.1f} GiB, {out.parent} has {free / 2**30:.1f} GiB free; "
                           "write it elsewhere (a bigger disk, or /dev/shm when RAM allows)")


def _name_shards(tmp: Path, shards: list[list[str]]) -> None:
    n = len(shards)
    if n == 1:
        os.rename(tmp / "shard-00000.safetensors", tmp / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.rename(tmp / f"shard-{i:05d}.safetensors", tmp / final)
        weight_map.update({k: final for k in names})
    total = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")


def _save_tokenizer(tokenizer: str | None, out: Path) -> str:
    """Copy a tokenizer in (default: the embedded tiny model's; scoring uses token ids, any ids < vocab do)."""
    from transformers import AutoTokenizer

    from harness.tiny import builtin_path

    src = tokenizer or str(builtin_path("tiny"))
    try:
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    except (OSError, ValueError) as e:
        raise HarnessError(f"--tokenizer {src!r}: cannot load it ({str(e)[:200]})") from None
    return "builtin:tiny" if tokenizer is None else tokenizer


# ---- BF16 view of an NVFP4 checkpoint (written here; read by harness.quant.checkpoint) ----------------------------------

def write_dequant_view(nvfp4_dir: Path, out: Path, force: bool = False) -> dict:
    """A BF16 model dir whose weights are ``nvfp4_dir``'s dequantization (config + tokenizer + a pointer, no weights)."""
    from harness.quant.checkpoint import checkpoint_quantization

    nvfp4_dir = Path(nvfp4_dir).resolve()
    cfg = json.loads((nvfp4_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    q = checkpoint_quantization(nvfp4_dir)
    if q.get("scheme") != "NVFP4" or q.get("format") not in ("nvfp4-pack-quantized", "modelopt"):
        raise HarnessError(f"{nvfp4_dir}: not an NVFP4 checkpoint in the compressed-tensors or ModelOpt layout "
                           f"(quant_method={q.get('quant_method')!r}, format={q.get('format')!r})")
    out = Path(out)
    _check_output(out, 1 << 20, force)
    with atomic_dir(out, prefix=".", on_exists="replace") as tmp:
        (tmp / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16", "torch_dtype": "bfloat16"},
                                                    indent=1) + "\n")
        for f in nvfp4_dir.iterdir():
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template"))
                                or f.name == "generation_config.json"):
                shutil.copy2(f, tmp / f.name)
        view = {"kind": "nvfp4-dequantized", "source": os.path.relpath(nvfp4_dir, out.resolve().parent / out.name),
                "note": "BF16 weights = dequantization of source; vLLM: load_format harness_dequant (set by the "
                        "harness's vllm backend); hf: dequantized in memory"}
        (tmp / VIEW_FILE).write_text(json.dumps(view, indent=1) + "\n")
    return {"path": str(out), **view}
