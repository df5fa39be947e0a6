"""Where a dataset's rows come from: ``datasets.load_dataset`` on a hub id, a saved dataset folder, or local files in the
hub's schema (parquet, JSON lines, CSV, arrow), each local file checked (there, not empty, parseable: a malformed JSON
line by file:line) before any work. No datasets import at module import time."""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.errors import HarnessError

LOCAL_BUILDERS = ("parquet", "json", "csv", "arrow", "text")


def _is_saved_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json"))
    )


def load_rows(path: str, *, split: str, name: str | None = None, revision: str | None = None,
              data_files=None, cache_dir: str | None = None):
    """Rows of one split through ``datasets`` (hub id, builder + local data_files, or a saved dataset dir)."""
    import datasets

    datasets.disable_progress_bars()
    if data_files is None and os.path.exists(path) and not _is_saved_dataset_dir(path):
        path, data_files = local_files(path, split)
    check_data_files(data_files)  # missing, empty, malformed: said by file (and line) before datasets' tracebacks
    try:
        if _is_saved_dataset_dir(path):
            ds = datasets.load_from_disk(path)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            kwargs = {}
            if data_files is not None:
                kwargs["data_files"] = {split: data_files}
            ds = datasets.load_dataset(path, name, split=split, revision=revision, cache_dir=cache_dir, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, StopIteration,
            datasets.exceptions.DatasetsError) as e:
        where = f"{path!r}" + (f" config {name!r}" if name else "") + f" split {split!r}"
        hint = ("local data_files missing or unreadable" if data_files is not None else
                "no network or not cached: set HF_DATASETS_OFFLINE=1 with a warm cache, or point data_files at a local copy")
        raise HarnessError(f"could not load dataset {where}: {type(e).__name__}: {str(e)[:400]}\n  hint: {hint}") from None
    if len(ds) == 0:
        raise HarnessError(f"dataset {path!r} split {split!r}" + (f" ({data_files})" if data_files else "") +
                           " holds no rows; point it at data that has some")
    return ds


def check_data_files(data_files) -> None:
    """Local data files as ``datasets`` would read them, checked without it: each there, not empty, parquet readable
    with rows, JSON lines parsed line by line (a malformed line named by file:line and the parser's reason; a .json
    file may also be one JSON document). Cheap enough for the preflight: no tokenizer, no engine."""
    files = [data_files] if isinstance(data_files, str) else list(data_files or [])
    fix = "fix data_files (or the dataset path) in the config"
    for f in files:
        if "://" in f or any(c in f for c in "*?["):  # remote or a glob: datasets resolves those itself
            continue
        if not os.path.exists(f):
            raise HarnessError(f"{f}: data file not found; {fix}")
        if os.path.isdir(f):
            continue
        if os.path.getsize(f) == 0:  # datasets fails on these with DatasetGenerationError / StopIteration tracebacks
            raise _no_rows(f)
        if f.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                rows = pq.ParquetFile(f).metadata.num_rows
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise HarnessError(f"{f}: not a readable parquet file ({type(e).__name__}: {str(e)[:200]}); "
                                   f"{fix}") from None
            if rows == 0:
                raise _no_rows(f)
        elif f.endswith((".jsonl", ".json")):
            with open(f, encoding="utf-8", errors="strict") as fh:
                try:
                    text = fh.read()
                except UnicodeDecodeError as e:
                    raise HarnessError(f"{f}: not UTF-8 text (byte {e.start}); {fix}") from None
            if f.endswith(".json"):
                try:
                    json.loads(text)
                    continue  # one JSON document (datasets reads a list of rows, or a field of one)
                except json.JSONDecodeError:
                    pass
            n_rows = 0
            for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): texts hold U+2028
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise HarnessError(f"{f}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove that "
                                       "line") from None
                n_rows += 1
            if not n_rows:
                raise _no_rows(f)


def _no_rows(f: str) -> HarnessError:
    return HarnessError(f"{f} holds no rows; point data_files (or the dataset path) at a file that has some")


def local_data_files(path: str, split: str, data_files):
    """The local files a dataset source reads (data_files, or a local path laid out as local_files reads it); None
    for a hub id or a saved dataset folder."""
    if data_files is None and os.path.exists(path) and not _is_saved_dataset_dir(path):
        return local_files(path, split)[1]
    return data_files


BUILDER_BY_SUFFIX = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow", ".csv": "csv"}


def local_files(path: str, split: str) -> tuple[str, str | list[str]]:
    """A local file, or a folder laid out like a hub snapshot (``<config>/<split>-00000-of-00001.parquet``), as a
    (builder, data_files) pair for ``datasets.load_dataset``."""
    p = Path(path)
    if p.is_file():
        builder = BUILDER_BY_SUFFIX.get(p.suffix)
        if builder is None:
            raise HarnessError(f"{path}: unknown file type {p.suffix!r}; use one of {', '.join(BUILDER_BY_SUFFIX)}")
        return builder, str(p)
    for suffix, builder in BUILDER_BY_SUFFIX.items():
        files = sorted({str(f) for pattern in (f"{split}-*{suffix}", f"{split}{suffix}", f"{split}/*{suffix}")
                        for f in p.rglob(pattern)})
        if files:
            return builder, files
    raise HarnessError(f"{path}: no files for split {split!r} (looked for {split}*.parquet/.json/.jsonl/.arrow/.csv "
                       "and a saved dataset dir)")
