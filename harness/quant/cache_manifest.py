"""What a cache entry must hold, written when it is built and checked before it is used.

The manifest lists every file with its size, the SHA-256 of each small file (configs, tokenizer, scales under
``HASH_LIMIT``), and, for safetensors shards, that the header parses and the tensors' extent is the file's size. A
truncated shard, a file gone or edited, or a shard with a garbled header fails the check; the cache then rebuilds
the entry instead of handing it to an engine. Checking 44 GB takes well under a second: big files are sized, not
hashed.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

NAME = "harness_manifest.json"
HASH_LIMIT = 8 * 2**20
SKIP = {NAME, "harness_cache.json"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_problem(path: Path) -> str | None:
    """None when the shard's header parses and its tensors end exactly at the end of the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return "shorter than a safetensors header"
            n = struct.unpack("<Q", raw)[0]
            if n > min(size - 8, 100 * 2**20):
                return f"header length {n} does not fit the file ({size} bytes)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"unreadable header ({type(e).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        return f"tensors end at byte {8 + n + max(ends, default=0)} but the file has {size}"
    return None


def build(entry: Path) -> dict:
    files = {}
    for f in sorted(p for p in entry.rglob("*") if p.is_file() and p.name not in SKIP):
        st = f.stat().st_size
        rec: dict = {"bytes": st}
        if st <= HASH_LIMIT:
            rec["sha256"] = _sha256(f)
        files[f.relative_to(entry).as_posix()] = rec
    return {"version": 1, "files": files}


def write(entry: Path) -> dict:
    m = build(entry)
    (entry / NAME).write_text(json.dumps(m, indent=1) + "\n")
    return m


def problems(entry: Path) -> list[str]:
    """What is wrong with ``entry`` against its manifest (empty: sound)."""
    try:
        m = json.loads((entry / NAME).read_text())
    except (OSError, ValueError):
        return [f"no readable {NAME}"]
    out = []
    for rel, rec in m.get("files", {}).items():
        f = entry / rel
        if not f.is_file():
            out.append(f"{rel}: missing")
            continue
        size = f.stat().st_size
        if size != rec["bytes"]:
            out.append(f"{rel}: {size} bytes, {rec['bytes']} expected (truncated or replaced)")
        elif "sha256" in rec and _sha256(f) != rec["sha256"]:
            out.append(f"{rel}: content changed")
        elif f.suffix == ".safetensors":
            p = safetensors_problem(f)
            if p:
                out.append(f"{rel}: {p}")
    return out
