"""Atomic writes, the one scheme every writer in omnifuse uses, and file hashes.

A file is written to a temporary sibling and renamed over its place (``atomic_write``); a folder is
filled in a temporary sibling folder and swapped in (``atomic_dir``). Readers never see half a file or
half a folder, and a crash leaves the previous version. Temporaries are created with the process's
normal permissions (umask applied): ``tempfile``'s 0600 / 0700 — and safetensors' 0600 — would leave
reports, data files and weights unreadable to anyone else once renamed into place.

This module imports nothing of omnifuse (it is the ground layer); writers that need a library (safetensors)
pass a ``write(tmp_path)`` callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_beside(path: Path, prefix: str | None = None) -> Path:
    """A new, empty temporary file next to ``path`` (same file system, so os.replace is atomic), with the
    process's normal permissions. ``prefix`` (default ``.<name>.``) lets a caller recognise its own
    leftovers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = prefix if prefix is not None else f".{path.name}."
    while True:
        tmp = path.parent / f"{head}{secrets.token_hex(6)}.tmp"
        try:
            tmp.open("x").close()
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write(path: Path, write: Callable[[Path], None], prefix: str | None = None) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; then it is renamed over ``path``. On any
    failure the temporary file is removed and ``path`` is unchanged."""
    tmp = temp_beside(path, prefix)
    mode = tmp.stat().st_mode & 0o777
    try:
        write(tmp)
        os.chmod(tmp, mode)  # a writer that recreated the file (safetensors: 0600) gets normal permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _old_beside(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap the folder ``tmp`` into ``final``: an existing ``final`` is moved aside to ``.<name>.old``
    first, then removed (``recover_dir`` repairs a crash between the two renames)."""
    old = _old_beside(final)
    shutil.rmtree(old, ignore_errors=True)  # a stale one: recover_dir, where it matters, has run before
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final`` (named ``<prefix><random>``, default prefix
    ``.<name>.``); when the block ends normally the folder gets normal permissions and replaces
    ``final`` (``replace_dir``); when it raises, the folder is removed and ``final`` is unchanged."""
    final.parent.mkdir(parents=True, exist_ok=True)
    head = prefix if prefix is not None else f".{final.name}."
    while True:
        tmp = final.parent / f"{head}{secrets.token_hex(6)}"
        try:
            tmp.mkdir()
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """Repair what a crash inside ``replace_dir`` can leave: if it died between moving the old folder
    aside and moving the new one in, the old folder is complete, so it is put back. Half-written
    temporary folders of a crashed ``atomic_dir`` (default prefix) are removed."""
    old = _old_beside(final)
    if not final.exists() and old.is_dir():
        os.replace(old, final)
    for stale in final.parent.glob(f".{final.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
