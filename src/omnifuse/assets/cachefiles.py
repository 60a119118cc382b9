"""Writing into the asset cache: every file or folder goes into a temporary sibling named after our pid
and is renamed into place (``omnifuse.atomic``), and the temporaries of conversions whose process died
(SIGKILL, power loss) are removed before the next attempt, never those of a conversion still running."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from omnifuse.atomic import atomic_dir, atomic_write

_TMP_MARK = ".tmp-"  # temporary siblings are named .<name>.tmp-<pid>-<random>


def _clean_stale_temps(final: Path) -> None:
    """Remove temporaries left by conversions whose process died (SIGKILL, power loss)."""
    prefix = f".{final.name}{_TMP_MARK}"
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and _pid_alive(int(pid_text)):
            continue  # another process is converting right now
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_name(final: Path) -> str:
    return f".{final.name}{_TMP_MARK}{os.getpid()}-"


@contextlib.contextmanager
def writing_dir(final: Path) -> Iterator[Path]:
    """``omnifuse.atomic.atomic_dir`` with this cache's temporary names (marked with our pid, so that
    ``_clean_stale_temps`` removes only the leftovers of dead processes); every file readable."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(final)
    with atomic_dir(final, prefix=_temp_name(final)) as tmp:
        yield tmp
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes its files owner-only; the cache is an ordinary user folder


def save_safetensors(tensors: dict, final: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(final)
    atomic_write(final, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), prefix=_temp_name(final))
