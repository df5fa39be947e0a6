"""One way to write a file whole or not at all (harness/atomic.py)."""
from __future__ import annotations

import pytest

from harness.atomic import atomic_path, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "b.json"
    atomic_write_text(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.json"]


def test_a_complete_write_replaces_the_file(tmp_path):
    target = tmp_path / "b.json"
    atomic_write_text(target, "old")
    with atomic_path(target, suffix=".tmp.npz") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.npz")
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_a_written_file_gets_the_mode_a_plain_open_gives_it(tmp_path):
    """Baselines are shared: a temporary file's 0600 must not survive the rename (umask 022 -> 0644)."""
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.json", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644


def _fill(d, text):
    (d / "f").write_text(text)


def test_a_folder_is_published_whole_or_not_at_all_and_each_mode_treats_an_existing_one_as_it_says(tmp_path):
    from harness.atomic import atomic_dir

    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            _fill(tmp, "half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []                         # nothing: no final, no temporary
    with atomic_dir(final) as tmp:
        _fill(tmp, "first")
    with atomic_dir(final) as tmp:                                # keep: another process won the race
        _fill(tmp, "second")
    assert (final / "f").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_dir(final, on_exists="replace") as tmp:
        _fill(tmp, "third")
    assert (final / "f").read_text() == "third" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(RuntimeError):                             # a failed replacement leaves the old one
        with atomic_dir(final, on_exists="replace") as tmp:
            _fill(tmp, "fourth")
            raise RuntimeError("interrupted")
    assert (final / "f").read_text() == "third" and [p.name for p in tmp_path.iterdir()] == ["out"]
    pub = atomic_dir(final, on_exists="unique")
    with pub as tmp:
        _fill(tmp, "fifth")
    assert pub.final == tmp_path / "out-2" and (pub.final / "f").read_text() == "fifth"
    assert (final / "f").read_text() == "third"
    with pytest.raises(ValueError, match="keep, replace or unique"):
        atomic_dir(final, on_exists="overwrite")
