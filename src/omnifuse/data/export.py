"""Writing a data set folder so that an interrupted export never looks finished.

Every exporter (easy-vqa, spoken-easy-vqa, av-digits) builds into a temporary sibling folder, writes a
``.complete`` marker holding its manifest (what it was made from), and renames the folder into place. A
later call with the same manifest returns at once; any change of the manifest rebuilds the set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omnifuse.atomic import atomic_dir
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_out_dir

MARKER = ".complete"


def is_complete(out_dir: Path, manifest: dict[str, Any], files: Iterable[Path]) -> bool:
    """Whether ``out_dir`` holds a finished export of ``manifest`` with all of ``files``."""
    try:
        found = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == manifest and all(Path(f).is_file() for f in files)


def write_export(
    out_dir: Path,
    manifest: dict[str, Any],
    files: Iterable[Path],
    build: Callable[[Path], None],
    what: str,
) -> None:
    """``build(tmp)`` writes the data set into a temporary folder beside ``out_dir``; with the marker
    written, it replaces ``out_dir``. A concurrent exporter that finished first wins. File-system errors
    become an error naming ``what`` and the folder."""
    files = list(files)
    check_out_dir(out_dir, f"the {what} folder")
    if out_dir.is_dir() and not (out_dir / MARKER).exists() and any(out_dir.iterdir()):
        # The export replaces the folder as a whole: a folder of the user's own would be deleted.
        raise OmnifuseError(
            f"the {what} folder {out_dir} already holds files and is not an earlier export (no {MARKER} in "
            "it); nothing was changed. Give a new or empty folder with --out"
        )
    step = "create"  # how far the export got when an OSError came: create, build or swap
    try:
        with atomic_dir(out_dir, prefix=f".{out_dir.name}.tmp-") as tmp:
            step = "build"
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            step = "swap"
    except OSError as exc:
        if step == "create":
            raise OmnifuseError(
                f"cannot create the {what} folder next to {out_dir} ({exc}); check the path and permissions."
            ) from None
        if step == "swap" and is_complete(out_dir, manifest, files):
            return  # a concurrent exporter finished first
        raise OmnifuseError(
            f"exporting {what} into {out_dir} failed ({exc}); check free disk space and write permission, "
            "then rerun."
        ) from None
