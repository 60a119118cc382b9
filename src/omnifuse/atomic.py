"""Atomic file writes (a temporary file beside the target, renamed into place: readers never see half a
file) and file hashes."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """A new, empty temporary file next to ``path`` (same file system, so os.replace is atomic), created
    with the process's normal permissions — tempfile.mkstemp's 0600 would leave reports and weights
    unreadable to anyone else once the temporary file is renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            tmp.open("x").close()
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_beside(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
