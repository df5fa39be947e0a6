"""Rebuild ``wikitext-2-raw-v1/test-00000-of-00001.parquet`` from a public copy of the WikiText-2 raw test split.

    python -m harness.texts.build_wikitext wiki.test.raw

The copy used (README.md beside this file says where it came from) holds the split's 2,891 non-blank rows, one per
line with CRLF line ends and no blank rows. Each line becomes one row in the hub's schema (a ``text`` column, the row's
text followed by ``\\n`` as the hub stores it); blank rows are not reproduced, which the WikiText rule (the first N
non-blank rows, stripped) does not see. The input's sha256 is checked, so the file can only be rebuilt from that copy.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

SOURCE_SHA256 = "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"
ROWS = 2891
OUT = Path(__file__).resolve().parent / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"


def rows_from_raw(raw: bytes) -> list[str]:
    lines = raw.decode("utf-8").split("\r\n")
    if lines[-1] == "":
        lines.pop()
    if any("\n" in line or "\r" in line for line in lines):
        raise SystemExit("unexpected line ends: not the CRLF copy this script was written for")
    return [line + "\n" for line in lines if line.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="the public wiki.test.raw copy")
    a = ap.parse_args(argv)
    raw = a.raw.read_bytes()
    got = hashlib.sha256(raw).hexdigest()
    if got != SOURCE_SHA256:
        raise SystemExit(f"{a.raw}: sha256 {got}, expected {SOURCE_SHA256}")
    rows = rows_from_raw(raw)
    if len(rows) != ROWS:
        raise SystemExit(f"{len(rows)} non-blank rows, expected {ROWS}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    OUT.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), OUT, compression="zstd", compression_level=19)
    print(f"{OUT}: {len(rows)} rows, {sum(len(r.encode()) for r in rows):,} bytes of text, "
          f"{OUT.stat().st_size:,} bytes on disk")


if __name__ == "__main__":
    main()
