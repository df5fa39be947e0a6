"""A task's rows: the shipped split (harness/tasks/data, verified by sha256 and row count on every read), local JSON
lines in the hub schema, or the hub itself through ``datasets`` (the task's hub id, or the config's ``source``).

Every fault names the file, and a malformed row its line, with the fix; nothing here needs torch.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from harness.data.files import load_rows
from harness.errors import DataError
from harness.tasks.definitions import TaskSpec

DATA_DIR = Path(__file__).resolve().parent / "data"
JSON_LINES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def shipped_path(file: str) -> Path:
    return DATA_DIR / file


def read_json_lines(path: Path, expect_sha256: str | None = None, expect_rows: int | None = None) -> list[dict]:
    """Rows of a JSON-lines file (gzip-compressed where it ends in .gz); with ``expect_sha256`` and ``expect_rows``,
    the file must be the shipped one exactly."""
    path = Path(path)
    fix = ("reinstall the harness (pip install --force-reinstall nvfp4-gate) or restore the file with git checkout"
           if expect_sha256 else "fix or replace the file")
    try:
        raw = path.read_bytes()
        text = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except FileNotFoundError:
        raise DataError(f"{path}: task data file not found; {fix}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e}); {fix}") from None
    if expect_sha256 and hashlib.sha256(text).hexdigest() != expect_sha256:
        raise DataError(f"{path}: damaged (sha256 {hashlib.sha256(text).hexdigest()[:12]}..., shipped "
                        f"{expect_sha256[:12]}...); {fix}")
    try:
        lines = text.decode("utf-8").split("\n")  # not splitlines(): texts hold U+2028, which it splits at
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); {fix}") from None
    rows = []
    for n, line in enumerate(lines, 1):  # not splitlines(): U+2028 in texts
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a JSON object ({e.msg} at column {e.colno}); {fix}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: a JSON {type(row).__name__}, not an object; {fix}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: holds no rows; {fix}")
    if expect_rows is not None and len(rows) != expect_rows:
        raise DataError(f"{path}: {len(rows)} rows, the official split has {expect_rows}; {fix}")
    return rows


def shipped_rows(spec: TaskSpec) -> tuple[list[dict], str]:
    """The task's shipped split, and where each row came from (for messages: ``file:line``)."""
    p = shipped_path(spec.file)
    return read_json_lines(p, spec.sha256, spec.rows), str(p)


def fewshot_rows(spec: TaskSpec) -> list[dict]:
    if not spec.fewshot_file:
        return []
    return read_json_lines(shipped_path(spec.fewshot_file), spec.fewshot_sha256, spec.fewshot_rows)


def source_rows(source, resolve_files) -> tuple[list[dict], str]:
    """Rows from a config's ``source`` (config.TaskSource): local JSON lines read here (a malformed line named by
    file:line), anything else through ``datasets`` (a hub id, other local formats, a saved dataset dir)."""
    files = resolve_files(source.data_files)
    listed = [files] if isinstance(files, str) else list(files or [])
    if listed and all(f.endswith(JSON_LINES) for f in listed):
        rows: list[dict] = []
        for f in listed:
            rows += read_json_lines(Path(f))
        return rows, ", ".join(listed)

    try:
        ds = load_rows(source.path, split=source.split, name=source.name, revision=source.revision, data_files=files)
    except Exception as e:  # noqa: BLE001 - load_rows raises HarnessError for what it knows; anything else too
        raise DataError(str(e)) from None
    return [dict(r) for r in ds], f"{source.path}" + (f" {source.name}" if source.name else "") + f" {source.split}"
