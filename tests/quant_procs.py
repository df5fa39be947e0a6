"""Finding a gate's quantization processes from outside (/proc), for the tests that interrupt or kill a gate."""
from __future__ import annotations

from pathlib import Path


def quantizing(cache: Path) -> tuple[list[int], int | None]:
    """The processes quantizing into ``cache`` (as ps shows them: the plain child names its spec, a zygote names the
    cache) and the build among them: the plain child, or the zygote's forked child."""
    procs: dict[int, tuple[list[bytes], int]] = {}
    for p in Path("/proc").iterdir():
        try:
            cmdline = (p / "cmdline").read_bytes().split(b"\0")
            ppid = int(next(ln for ln in (p / "status").read_text().splitlines() if ln.startswith("PPid:")).split()[1])
        except (OSError, ValueError, StopIteration):
            continue
        if any(str(cache).encode() in a for a in cmdline) and (b"harness.quantize" in cmdline
                                                               or b"harness.quant_zygote" in cmdline):
            procs[int(p.name)] = (cmdline, ppid)
    build = next((pid for pid, (cmd, ppid) in procs.items()
                  if b"harness.quantize" in cmd or ppid in procs), None)
    return sorted(procs), build
