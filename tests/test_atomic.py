"""The one atomic-write scheme: a file or a folder is complete or absent, never half written, and keeps
the process's normal permissions."""

from __future__ import annotations

import os

import pytest

from omnifuse.atomic import atomic_dir, atomic_write, atomic_write_text, recover_dir


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "eval.json"
    atomic_write_text(path, "old")

    def half(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_a_writer_that_makes_its_file_private_still_gives_a_readable_one(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "w.bin", lambda tmp: (tmp.write_bytes(b"x"), os.chmod(tmp, 0o600)))
    finally:
        os.umask(umask)
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == 0o644


def test_a_folder_is_swapped_in_whole_or_not_at_all(tmp_path):
    final = tmp_path / "checkpoint"
    for version in ("1", "2"):
        with atomic_dir(final) as tmp:
            (tmp / "state.json").write_text(version)
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "state.json").write_text("3")
        raise RuntimeError("killed")
    assert (final / "state.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_crash_inside_the_swap_is_repaired(tmp_path):
    final = tmp_path / "checkpoint"
    with atomic_dir(final) as tmp:
        (tmp / "state.json").write_text("1")
    os.replace(final, tmp_path / ".checkpoint.old")  # died after moving the old folder aside
    recover_dir(final)
    assert (final / "state.json").read_text() == "1"
