"""Paired comparison of two evaluated runs (``omnifuse compare RUN_A RUN_B``) on the same samples."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from omnifuse.errors import OmnifuseError
from omnifuse.eval.runfiles import PAIRED, read_records
from omnifuse.eval.stats import PairedComparison, paired_comparison


def load_predictions(run_dir: Path) -> dict[str, dict]:
    """RUN/predictions.jsonl (written by ``omnifuse eval``) as id -> record."""
    path = Path(run_dir) / "predictions.jsonl"
    if not Path(run_dir).is_dir():
        raise OmnifuseError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise OmnifuseError(f"{run_dir} has no predictions.jsonl: run `omnifuse eval {run_dir}` first")
    records: dict[str, dict] = {}
    for rec in read_records(path, PAIRED, "predictions file"):
        key = str(rec["id"])
        rec.setdefault("score", float(rec["correct"]))
        if key in records:
            raise OmnifuseError(
                f"{path}: sample id {key!r} appears twice; ids must be unique to pair samples. "
                f"Re-run `omnifuse eval {run_dir}`"
            )
        records[key] = rec
    if not records:
        raise OmnifuseError(f"{path} is empty: run `omnifuse eval {run_dir}` again")
    return records


@dataclass(frozen=True)
class RunComparison:
    run_a: str
    run_b: str
    overall: PairedComparison
    per_type: dict[str, PairedComparison]

    def summary(self) -> dict:
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            **self.overall.summary(),
            "per_type": {t: c.summary() for t, c in self.per_type.items()},
        }


def compare_runs(run_a: Path, run_b: Path, seed: int = 0) -> RunComparison:
    """Pair the two runs' predictions by sample id; B − A overall and per question type (taken from A)."""
    a, b = load_predictions(run_a), load_predictions(run_b)
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if only_a or only_b:
        raise OmnifuseError(
            f"{run_a} and {run_b} were evaluated on different samples ({len(only_a)} ids only in "
            f"{run_a}, {len(only_b)} only in {run_b}); a paired comparison needs both evaluated on the "
            f"same data and subset: run `omnifuse eval RUN --data FILE [--limit N]` with the same FILE and "
            f"N on both (a --limit subset is drawn with the recipe's data.eval_seed, so keep it equal too)"
        )
    ids = sorted(a)
    sa = [float(a[i]["score"]) for i in ids]
    sb = [float(b[i]["score"]) for i in ids]
    overall = paired_comparison(sa, sb, seed=seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for k, i in enumerate(ids):
        groups[str(a[i].get("question_type", "all"))].append(k)
    per_type = {}
    if len(groups) > 1:
        for t, idx in sorted(groups.items()):
            per_type[t] = paired_comparison([sa[k] for k in idx], [sb[k] for k in idx], seed=seed)
    return RunComparison(str(run_a), str(run_b), overall, per_type)
