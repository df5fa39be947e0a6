"""Content-addressed cache of quantized checkpoints.

Key = hash of (hub id + the commit its revision resolves to, or the local model dir's content), recipe text,
calibration spec, and the llmcompressor / compressed-tensors versions of the quantization interpreter. An entry
is built in a temp dir and
renamed into place only when quantization succeeded and the checkpoint has the promised scheme; a file lock makes
a second process wait and reuse the entry instead of building it twice or reading half of one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HarnessError

KEY_VERSION = 2  # 2: hub models keyed by the commit their revision resolves to
_VERSIONS_SNIPPET = (
    "import json\nfrom importlib.metadata import version, PackageNotFoundError\nout={}\n"
    "for p in ('llmcompressor','compressed-tensors'):\n"
    "    try: out[p]=version(p)\n    except PackageNotFoundError: out[p]=None\nprint(json.dumps(out))"
)


def interpreter_versions(interp) -> dict:
    try:
        r = subprocess.run([interp.python, "-c", _VERSIONS_SNIPPET], env=interp.env(), capture_output=True, text=True,
                           timeout=120)
    except FileNotFoundError:
        raise HarnessError(f"quantization interpreter not found: {interp.python!r}. Set --quant-python / "
                           "HARNESS_QUANT_PYTHON to a Python that has llmcompressor installed.") from None
    if r.returncode != 0:
        raise HarnessError(f"quantization interpreter {interp.describe()} failed to start: {r.stderr.strip()[-500:]}")
    v = json.loads(r.stdout.strip().splitlines()[-1])
    if not v.get("llmcompressor"):
        raise HarnessError(f"llmcompressor is not installed in the quantization interpreter {interp.describe()}; "
                           "install the 'quant' extra there (pip install 'nvfp4-gate[quant]') or point "
                           "--quant-python / --quant-pythonpath at an env that has it")
    return v


def cache_key(model: dict, recipe_text: str, calibration: dict, versions: dict) -> tuple[str, dict]:
    """``model``: harness.identity.key() of the model (local content, or hub id + resolved commit)."""
    material = {"key_version": KEY_VERSION, "model": model, "recipe": recipe_text,
                "calibration": calibration, "versions": versions}
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]
    return digest, material


@contextmanager
def file_lock(path: Path, log=None, poll_s: float = 5.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"waiting for another process building {path.stem} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class CheckpointCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "checkpoints"

    def entry(self, key: str) -> Path:
        return self.root / key

    def log_path(self, key: str) -> Path:
        """Quantization logs live beside the cache (kept after failures, so error messages can point at them)."""
        d = self.root.parent / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}.log"

    def get_or_build(self, key: str, material: dict, build, log=print) -> tuple[Path, bool]:
        """Return (path, hit). ``build(tmp_dir)`` must fill tmp_dir; it is moved into place only if it returns."""
        final = self.entry(key)
        if (final / "harness_cache.json").exists():
            return final, True
        with file_lock(self.root / f"{key}.lock", log=log):
            if (final / "harness_cache.json").exists():  # built by the process we waited for
                return final, True
            tmp = self.root / f".tmp-{key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                info = build(tmp)
                (tmp / "harness_cache.json").write_text(
                    json.dumps({"key": key, "material": material, "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "build": info}, indent=1, default=str) + "\n")
                if final.exists():  # a stale, incomplete entry (no harness_cache.json)
                    shutil.rmtree(final)
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                for leftover in tmp.parent.glob(f"{tmp.name}*"):
                    if leftover.is_file():
                        leftover.unlink(missing_ok=True)
        return final, False

    def find(self, model: dict, recipe_text: str, calibration: dict) -> tuple[Path, dict] | None:
        """The newest complete entry for this model, recipe and calibration, whatever llm-compressor built it: what
        an environment without llm-compressor can still use."""
        want = {"key_version": KEY_VERSION, "model": model, "recipe": recipe_text,
                "calibration": json.loads(json.dumps(calibration, default=str))}
        found = []
        for e in self.entries():
            meta = json.loads((Path(e["path"]) / "harness_cache.json").read_text())
            if {k: meta["material"].get(k) for k in want} == want:
                found.append((meta.get("built") or "", Path(e["path"]), meta))
        return max(found, key=lambda t: t[0])[1:] if found else None

    def entries(self) -> list[dict]:
        out = []
        if not self.root.exists():
            return out
        for d in sorted(self.root.iterdir()):
            meta = d / "harness_cache.json"
            if d.is_dir() and meta.exists():
                m = json.loads(meta.read_text())
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                model = m["material"]["model"]
                out.append({"key": d.name, "path": str(d), "built": m.get("built"), "bytes": size,
                            "model": model.get("hub_id") or model.get("local_dir_sha256", "")[:12],
                            "recipe_sha": hashlib.sha256(m["material"]["recipe"].encode()).hexdigest()[:12]})
        return out

    def clear(self) -> int:
        n = len(self.entries())
        if self.root.exists():
            shutil.rmtree(self.root)
        return n
