"""Content-addressed cache of quantized checkpoints.

Key = hash of (hub id + the commit its revision resolves to, or the local model dir's content; trust_remote_code),
recipe text, calibration spec, and the llmcompressor / compressed-tensors / transformers / torch versions of the
quantization interpreter. An entry is built in a temp dir and renamed into place only when quantization succeeded
and the checkpoint has the promised scheme, with a manifest (cache_manifest.py) that is checked before every use:
a damaged entry is reported and rebuilt, never loaded. One lock per key (cache_lock.py) makes a second process
wait, saying for whom, and reuse the entry. Temp dirs and spec files of builders that died (SIGKILL, power loss)
are removed by the next builder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from harness.quant import cache_manifest
from harness.atomic import atomic_dir
from harness.quant.cache_lock import cache_lock, pid_alive
from harness.errors import HarnessError
from harness.recipes.catalog import recipe_id

KEY_VERSION = 3  # 2: hub models keyed by the commit their revision resolves to; 3: + transformers, torch, manifest
_VERSIONS_SNIPPET = (
    "import json\nfrom importlib.metadata import version, PackageNotFoundError\nout={}\n"
    "for p in ('llmcompressor','compressed-tensors','transformers','torch'):\n"
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


def cache_key(model: dict, recipe_text: str, calibration: dict, versions: dict,
              options: dict | None = None) -> tuple[str, dict]:
    """``model``: harness.models.identity.key() of the model (local content, or hub id + resolved commit). ``options``: build
    settings other than their defaults (a default is left out, so that entries built before the setting existed keep
    their keys)."""
    material = {"key_version": KEY_VERSION, "model": model, "recipe": recipe_text,
                "calibration": calibration, "versions": versions}
    if options:
        material["options"] = options
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]
    return digest, material


# a builder's leftovers after a kill: its temp folder, spec file and offload folder, and a damaged entry it had moved
# aside to replace (harness.atomic.atomic_dir, on_exists="replace")
_TMP = re.compile(r"^\.(?:tmp-(?P<key>[^-.]+)-(?P<pid>\d+)(?:\.spec\.json|\.offload)?|(?P<old>[^-.]+)\.old-(?P<opid>\d+))$")


class CheckpointCache:
    def __init__(self, root: Path, lock_timeout_s: float | None = None):
        self.root = Path(root) / "checkpoints"
        self.locks = Path(root) / "locks"
        self.lock_timeout_s = lock_timeout_s

    def entry(self, key: str) -> Path:
        return self.root / key

    def log_dir(self) -> Path:
        """Quantization logs live beside the cache (kept after failures, so error messages can point at them)."""
        d = self.root.parent / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log_path(self, key: str) -> Path:
        return self.log_dir() / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}.log"

    def lock(self, key: str, what: str, log=None, timeout_s: float | None = None):
        return cache_lock(self.locks / f"{key}.lock", what, timeout_s=timeout_s if timeout_s is not None
                          else self.lock_timeout_s, log=log)

    def clean_orphans(self, held_key: str | None = None, log=None) -> list[str]:
        """Remove temp dirs and spec files of builders that are gone: any of ``held_key`` (whose lock the caller
        holds, so nobody else is building it) and those of dead processes."""
        removed = []
        if not self.root.exists():
            return removed
        for p in self.root.iterdir():
            m = _TMP.match(p.name)
            if not m:
                continue
            key, pid = (m["key"], m["pid"]) if m["key"] else (m["old"], m["opid"])
            if key != held_key and pid_alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
        if removed and log:
            log(f"removed what an interrupted build left in the cache: {', '.join(sorted(removed))}")
        return removed

    def sound(self, key: str, log=None, stale=None) -> bool:
        """The entry exists, is complete, and matches its manifest; a damaged one is said out loud. ``stale(build)``
        (the entry's recorded build) gives a reason to rebuild an entry whose key no longer says all it should, or
        None."""
        final = self.entry(key)
        if not (final / "harness_cache.json").exists():
            return False
        bad = cache_manifest.problems(final)
        if bad and log:
            log(f"cache entry {final} is damaged and will be rebuilt: {'; '.join(bad[:5])}")
        if not bad and stale is not None:
            why = stale(json.loads((final / "harness_cache.json").read_text()).get("build") or {})
            if why and log:
                log(f"cache entry {final} will be rebuilt: {why}")
            return not why
        return not bad

    def get_or_build(self, key: str, material: dict, build, log=print, stale=None) -> tuple[Path, bool]:
        """Return (path, hit). ``build(tmp_dir)`` fills an empty temp folder; it is moved into place only if it returns.
        ``stale``: as for ``sound``."""
        final = self.entry(key)
        if self.sound(key, stale=stale):
            return final, True
        with self.lock(key, f"building {key}", log=log):
            self.clean_orphans(held_key=key, log=log)
            if self.sound(key, log=log, stale=stale):  # built by the process we waited for
                return final, True
            try:  # a damaged or incomplete entry is replaced: moved aside, removed once the new one is in place
                with atomic_dir(final, on_exists="replace", tmp_name=f".tmp-{key}-{os.getpid()}") as tmp:
                    info = build(tmp)
                    (tmp / "harness_cache.json").write_text(
                        json.dumps({"key": key, "material": material, "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "build": info}, indent=1, default=str) + "\n")
                    cache_manifest.write(tmp)
            finally:
                self.clean_orphans(held_key=key)
        return final, False

    def find(self, model: dict, recipe_text: str, calibration: dict) -> tuple[Path, dict] | None:
        """The newest complete entry for this model, recipe and calibration, whatever llm-compressor built it: what
        an environment without llm-compressor can still use."""
        want = {"key_version": KEY_VERSION, "model": model, "recipe": recipe_text,
                "calibration": json.loads(json.dumps(calibration, default=str))}
        found = []
        for e in self.entries():
            if not self.sound(e["key"]):
                continue
            meta = json.loads((Path(e["path"]) / "harness_cache.json").read_text())
            if {k: meta["material"].get(k) for k in want} == want:
                found.append((meta.get("built") or "", Path(e["path"]), meta))
        return max(found, key=lambda t: t[0])[1:] if found else None

    def entries(self) -> list[dict]:
        out = []
        if not self.root.exists():
            return out
        for d in sorted(self.root.iterdir()):
            if d.name.startswith("."):  # a build in progress, or what a killed one left
                continue
            meta = d / "harness_cache.json"
            if d.is_dir() and meta.exists():
                m = json.loads(meta.read_text())
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                model = m["material"]["model"]
                out.append({"key": d.name, "path": str(d), "built": m.get("built"), "bytes": size,
                            "model": model.get("hub_id") or model.get("local_dir_sha256", "")[:12],
                            "recipe_sha": recipe_id(m["material"]["recipe"])})
        return out

    def clear(self, log=None) -> int:
        """Remove every entry (each under its lock, so never one being built or read) and every leftover."""
        n = 0
        if not self.root.exists():
            return n
        for d in sorted(self.root.iterdir()):
            m = _TMP.match(d.name)
            key = m["key"] if m else d.name
            with self.lock(key, "cache clear", log=log):
                if d.exists():
                    shutil.rmtree(d) if d.is_dir() else d.unlink(missing_ok=True)
                    n += 0 if m else 1
        return n
