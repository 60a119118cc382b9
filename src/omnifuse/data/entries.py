"""The entries of a conversation file that is either one JSON list or JSON lines (ShareGPT, OpenAI messages)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnifuse.data.jsonl import json_line, problem_list
from omnifuse.errors import OmnifuseError


def json_entries(src: Path, text: str, parse_list: Callable[[str], Any]) -> list[tuple[str, Any]]:
    """(where, entry) per entry: ``parse_list(text)`` when the file is a JSON list (text starting with ``[``
    in a file not named ``.jsonl``), else one strict JSON value per non-blank line, every bad line reported
    at once."""
    if src.suffix != ".jsonl" and text.lstrip().startswith("["):
        return [(f"{src.name} entry {i}", e) for i, e in enumerate(parse_list(text))]
    entries, bad = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                entries.append((f"{src.name} line {lineno}", json_line(line, f"{src.name} line {lineno}")))
            except OmnifuseError as exc:
                bad.append(str(exc))
    if bad:
        raise OmnifuseError(
            f"cannot convert {src}: it is neither a JSON list nor valid JSONL; {len(bad)} bad line(s):\n"
            f"{problem_list(bad)}"
        )
    return entries
