"""Finding a gate's quantization processes from outside (/proc), for the tests that interrupt or kill a gate."""
from __future__ import annotations

import os
import time
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
        if any(str(cache).encode() in a for a in cmdline) and (b"harness.quant.quantize" in cmdline
                                                               or b"harness.quant.zygote" in cmdline):
            procs[int(p.name)] = (cmdline, ppid)
    build = next((pid for pid, (cmd, ppid) in procs.items()
                  if b"harness.quant.quantize" in cmd or ppid in procs), None)
    return sorted(procs), build


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, within_s: float = 15.0) -> list[int]:
    deadline = time.time() + within_s
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]
