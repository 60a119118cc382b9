"""Readers for the files ``train`` and ``eval`` leave in a run directory, for the verbs that read them back
(report, compare). Every one is checked against the shape its writer gives it: a hand-edited, truncated or
otherwise damaged file is an OmnifuseError naming the file, the line and the value, never a KeyError or a
TypeError deep inside a plot or a template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_json, parse_json, read_json, read_text

_SCORES = {"accuracy": float, "n": int, "ci95?": [float, float]}

# RUN/metrics.jsonl of an LLM run: one optimizer step per line (only what is read back is checked).
STEP = {"stage": str, "loss": float, "eval_accuracy?": float}
# RUN/metrics.jsonl of a classifier run: one epoch per line.
EPOCH = {"epoch": int, "loss": float, "train_accuracy": float, "eval_accuracy": float}
# RUN/predictions.jsonl: one evaluated sample per line; what compare pairs, and what the report shows.
PAIRED = {"id": (str, int), "correct": bool, "score?": float, "question_type?": str}
PREDICTION = {**PAIRED, "answer": str, "prediction": str}
# RUN/eval.json of an LLM run, as far as the report shows it.
EVALUATION = {
    **_SCORES,
    "data": str,
    "per_type": {"*": _SCORES},
    "blind?": {**_SCORES, "per_type": {"*": _SCORES}},
}
ROBUSTNESS = [{"probe": str, "accuracy": float, "answers_changed": float}]
MANIFEST = {
    "subset": {"n": int, "seed": int},
    "generation": {"max_new_tokens": int},
    "data_sha256": str,
    "weights_sha256": str,
}


def _fix(path: Path) -> str:
    name = path.name
    if name == "metrics.jsonl":
        return "delete the damaged lines (or the file: only the report's curves are drawn from it)"
    if name == "results.jsonl":
        return "delete the damaged lines: the sweep trains and evaluates their runs again"
    return f"run `omnifuse eval {path.parent}` again to rewrite it"


def read_records(path: Path, schema: dict[str, Any], what: str) -> list[dict]:
    """The non-blank lines of a JSONL run file, each a JSON object conforming to ``schema``."""
    text = read_text(path, what)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{what} {path} line {lineno}"
        try:
            value = parse_json(line, where)
            if not isinstance(value, dict):
                raise OmnifuseError(f"{where} holds a JSON {type(value).__name__}, not an object")
            records.append(check_json(value, where, schema))
        except OmnifuseError as exc:
            raise OmnifuseError(f"{exc}; {_fix(path)}") from None
    return records


def read_document(path: Path, schema: Any, what: str) -> Any:
    """A JSON run file conforming to ``schema``."""
    try:
        return check_json(read_json(path, what), f"{what} {path}", schema)
    except OmnifuseError as exc:
        raise OmnifuseError(f"{exc}; {_fix(path)}") from None


def read_optional(path: Path, schema: Any, what: str) -> Any:
    """Like :func:`read_document`, None when the file does not exist."""
    return read_document(path, schema, what) if path.exists() else None
