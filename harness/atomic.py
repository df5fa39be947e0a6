"""Files written whole or not at all: a temporary file in the target's folder, renamed over the target when complete
(then the folder synced), removed on any error or interrupt. Baselines, token detail, lock-holder notes and rendered
reports all go through here; whole folders (a report, a cache entry) are published by one directory rename."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp"):
    """Yields a temporary path next to ``path`` to write; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the file gets the mode open() would give it
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def readable(path: Path, folder: bool = False) -> None:
    """Give a file (or folder) the mode open() (or mkdir()) would give it: mkstemp / mkdtemp leave 0600 / 0700."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def rename_unique(tmp: Path, base: Path) -> Path:
    """Publish the finished folder ``tmp`` as ``base``, or ``base-2``, ``base-3``, ... when that name is taken (two
    gates finishing in the same second): a rename onto an existing non-empty folder fails, so each name has one owner."""
    n = 1
    while True:
        final = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            if not final.exists():
                os.rename(tmp, final)
                return final
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        n += 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_dir(d: Path) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class atomic_dir:
    """``with atomic_dir(final) as tmp:`` yields a temporary folder beside ``final`` to fill; on success it becomes
    ``final`` in one rename, on any error or interrupt it is removed. When ``final`` exists by then, ``on_exists``
    decides: ``keep`` it (another process won the race with the same content: a cache), ``replace`` it (the old
    folder is moved aside first and removed only once the new one is in place: a rebuilt model), or publish as
    ``final-2``, ``final-3``, ... (``unique``: reports of the same second). ``.final`` is where it went.
    ``tmp_name``: the temporary folder's exact name, for a caller that holds a lock on ``final`` and recognises its
    own leftovers by name after a kill (the checkpoint cache: ``.tmp-<key>-<pid>``)."""

    def __init__(self, final: Path, prefix: str = ".tmp-", on_exists: str = "keep", tmp_name: str | None = None):
        if on_exists not in ("keep", "replace", "unique"):
            raise ValueError(f"on_exists={on_exists!r}: keep, replace or unique")
        self.final, self.prefix, self.on_exists, self.tmp_name = Path(final), prefix, on_exists, tmp_name
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp_name:
            self.tmp = self.final.parent / self.tmp_name
            shutil.rmtree(self.tmp, ignore_errors=True)  # a dead process's of the same name (a reused pid)
            self.tmp.mkdir()
        else:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}{self.final.name}-", dir=self.final.parent))
        readable(self.tmp, folder=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._publish()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is None:
            _sync_dir(self.final.parent)

    def _publish(self) -> None:
        if self.on_exists == "unique":
            self.final = rename_unique(self.tmp, self.final)
            return
        old = None
        if self.on_exists == "replace" and self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.rename(self.final, old)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if self.on_exists == "replace" or not self.final.is_dir():
                if old is not None:
                    os.rename(old, self.final)  # put the old one back: never neither
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
