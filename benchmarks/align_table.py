"""Tables of alignment runs for docs/alignment.md: mean ± standard deviation over the seeds of each recipe.

Usage: ``python benchmarks/align_table.py ROOT`` where ROOT holds ``<recipe name>/seed-<s>/eval.json``
(the layout of ``omnifuse train RECIPE --out ROOT/<recipe name>/seed-<s> --set seed=<s>``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def retrieval_table(runs: dict[str, list[dict]]) -> str:
    rows = [
        "| recipe | seeds | direction | R@1 | R@5 | R@10 | chance R@1 / R@5 / R@10 | gallery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, evals in runs.items():
        if "retrieval" not in evals[0]:
            continue
        for direction in evals[0]["retrieval"]:
            cells = [_cell([e["retrieval"][direction][f"R@{k}"] for e in evals]) for k in (1, 5, 10)]
            chance = " / ".join(f"{100 * evals[0]['chance'][direction][f'R@{k}']:.1f}" for k in (1, 5, 10))
            target = direction.split("_to_")[1]
            rows.append(
                f"| {name} | {len(evals)} | {direction.replace('_', ' ')} | {' | '.join(cells)} | {chance} | "
                f"{evals[0]['gallery'][target]} |"
            )
    return "\n".join(rows)


def zero_shot_table(runs: dict[str, list[dict]]) -> str:
    rows = [
        "| recipe | seeds | zero-shot, all classes | chance | zero-shot, held-out only | chance | seen classes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, evals in runs.items():
        if "zero_shot" not in evals[0]:
            continue
        z = [e["zero_shot"] for e in evals]
        rows.append(
            f"| {name} | {len(evals)} | {_cell([x['zero_shot_accuracy_all'] for x in z])} | "
            f"{100 * z[0]['chance_all']:.1f} | {_cell([x['zero_shot_accuracy_heldout_only'] for x in z])} | "
            f"{100 * z[0]['chance_heldout_only']:.1f} | "
            f"{_cell([e['seen_classes']['accuracy_all'] for e in evals])} |"
        )
    return "\n".join(rows)


def _plain(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" + (
        f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    )


def extras_table(runs: dict[str, list[dict]]) -> str:
    """Held-out canonical correlations (CCA, deep CCA) and translation errors (cycle autoencoder)."""
    rows = ["| recipe | seeds | measure | value |", "|---|---|---|---|"]
    for name, evals in runs.items():
        if "canonical_correlations" in evals[0]:
            # Components are ordered by their training correlation; on the eval pairs each is measured again.
            for split in ("train", "eval"):
                corr = [e["canonical_correlations"][split] for e in evals]
                rows.append(
                    f"| {name} | {len(evals)} | canonical correlations on the {split} pairs: first; sum of "
                    f"{len(corr[0])} | {_plain([c[0] for c in corr])}; {_plain([sum(c) for c in corr])} |"
                )
        if "translation_relative_mse" in evals[0]:
            for direction in evals[0]["translation_relative_mse"]:
                values = [e["translation_relative_mse"][direction] for e in evals]
                oracle = evals[0]["translation_relative_mse_key_means"][direction]
                rows.append(
                    f"| {name} | {len(evals)} | {direction.replace('_', ' ')} translation, MSE / variance "
                    f"(predicting the mean of the target's key) | {_plain(values)} ({oracle:.2f}) |"
                )
    return "\n".join(rows)


def main(root: Path) -> None:
    runs: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*/seed-*/eval.json")):
        runs.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    print(retrieval_table(runs))
    print()
    print(zero_shot_table(runs))
    print()
    print(extras_table(runs))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
