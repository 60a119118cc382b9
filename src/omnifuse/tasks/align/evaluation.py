"""What an alignment run is scored on, the same at the end of training and in ``omnifuse eval``:
cross-modal retrieval R@1/5/10 in both directions against their chance levels, and one line per query
in predictions.jsonl (its rank, and whether its first answer is right: ``omnifuse compare`` pairs these);
with ``eval --importance``, each side's importance for retrieval (:func:`importance`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from omnifuse.alignment.retrieval import chance_recall, cross_modal_retrieval
from omnifuse.errors import OmnifuseError
from omnifuse.eval.importance import (
    ImportanceSettings,
    importance_row,
    importance_summary,
    mean_over_draws,
    need_two,
    noise_like,
    permuted_rows,
)
from omnifuse.eval.metrics import RetrievalResult
from omnifuse.tasks.align.features import Gallery

KS = (1, 5, 10)

# (A items, B items) → similarity [n_a, n_b] for A→B queries and [n_b, n_a] for B→A (None: the transpose)
Similarity = Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray | None]]


def retrieve(
    similarity: Similarity, g: Gallery, names: list[str], ks: Sequence[int] = KS
) -> dict[str, RetrievalResult]:
    with torch.no_grad():
        sim_ab, sim_ba = similarity(g.a, g.b)
    return cross_modal_retrieval(sim_ab, g.keys_a, g.keys_b, sim_ba, ks, names=(names[0], names[1]))


def retrieval_eval(similarity: Similarity, g: Gallery, names: list[str]) -> dict:
    res = retrieve(similarity, g, names)
    a_to_b, b_to_a = res
    return {
        "retrieval": {d: r.summary() for d, r in res.items()},
        "gallery": {names[0]: len(g.keys_a), names[1]: len(g.keys_b)},
        "chance": {
            a_to_b: chance_recall(g.keys_a, g.keys_b, KS),
            b_to_a: chance_recall(g.keys_b, g.keys_a, KS),
        },
    }


def mean_r1(similarity: Similarity, g: Gallery, names: list[str]) -> float:
    return float(np.mean([r.recall[1] for r in retrieve(similarity, g, names, (1,)).values()]))


def retrieval_predictions(similarity: Similarity, g: Gallery, names: list[str]) -> list[dict]:
    """One record per query of each direction: ``id`` is ``<direction>:<sample id>`` (the gallery item's
    first sample), ``score`` its R@1 hit; grouped by direction in ``compare``."""
    records = []
    for direction, result in retrieve(similarity, g, names).items():
        ids = g.ids_a if direction.startswith(f"{names[0]}_to_") else g.ids_b
        for sample_id, rank in zip(ids, result.ranks.tolist(), strict=True):
            hit = rank == 1
            records.append(
                {"id": f"{direction}:{sample_id}", "correct": hit, "score": float(hit),
                 "question_type": direction, "rank": int(rank)}
            )  # fmt: skip
    return records


def headline(evaluation: dict) -> str:
    if "zero_shot" in evaluation:
        z = evaluation["zero_shot"]
        return (
            f"zero-shot accuracy {100 * z['zero_shot_accuracy_all']:.1f} % among all classes, "
            f"{100 * z['zero_shot_accuracy_heldout_only']:.1f} % among held-out ones"
        )
    text = "  ".join(
        f"{d.replace('_', ' ')} R@1/5/10 {100 * r['R@1']:.1f}/{100 * r['R@5']:.1f}/{100 * r['R@10']:.1f}"
        for d, r in evaluation["retrieval"].items()
    )
    if evaluation.get("cca_converged") is False:
        text += (
            " (the linear CCA stopped at its iteration limit before converging: cca_converged in eval.json)"
        )
    return text


def score(evaluation: dict) -> float:
    """The one number a sweep compares: mean R@1 of both directions (DeViSE: zero-shot accuracy among
    all classes, which is R@1 of retrieving the class name)."""
    if "zero_shot" in evaluation:
        return float(evaluation["zero_shot"]["zero_shot_accuracy_all"])
    return float(np.mean([r["R@1"] for r in evaluation["retrieval"].values()]))


ALIGN_NOISE = (
    "feature space: one side's normalised frozen-encoder features (the method's input) replaced by Gaussian "
    "noise with their per-element mean and standard deviation over the eval gallery"
)
NO_REMOVE = (
    "remove: not defined for retrieval (a pair without one side has nothing to rank or be ranked against); "
    "permute breaks the pairing instead, so both sides' permute rows fall to about chance by design, and noise "
    "measures how much each side's content carries the ranking"
)


def _hits(results: dict[str, RetrievalResult]) -> dict[str, list[float]]:
    return {d: (r.ranks == 1).astype(float).tolist() for d, r in results.items()}


def importance(similarity: Similarity, g: Gallery, names: list[str], settings: ImportanceSettings) -> dict:
    """Each side's importance for retrieval (:mod:`omnifuse.eval.importance`): R@1 per direction with one
    side's gallery items permuted among themselves (their keys stay: a query is right when it still finds
    its key) or replaced by noise, paired over the same queries."""
    if settings.explicit and "remove" in settings.perturbations:
        raise OmnifuseError(
            f"--perturbations {','.join(settings.perturbations)}: {NO_REMOVE.split(';')[0]}; an alignment run "
            "is measured with permute and noise (--perturbations permute,noise)"
        )
    need_two(min(len(g.keys_a), len(g.keys_b)), "gallery items")
    intact = _hits(retrieve(similarity, g, names, (1,)))
    rows = []
    for k, m in enumerate(names):
        for perturbation in (p for p in settings.perturbations if p != "remove"):
            side = g.a if k == 0 else g.b
            draws = []
            for seed in settings.seeds(k, perturbation):
                changed = permuted_rows(side, seed) if perturbation == "permute" else noise_like(side, seed)
                draws.append(_hits(retrieve(similarity, replace(g, **{"ab"[k]: changed}), names, (1,))))
            rows += [
                importance_row(
                    m,
                    perturbation,
                    f"R@1 {d.replace('_', ' ')}",
                    intact[d],
                    mean_over_draws([x[d] for x in draws]),
                )
                for d in intact
            ]
    notes = [NO_REMOVE] if "remove" in settings.perturbations else []
    return importance_summary(rows, settings, ALIGN_NOISE, notes)
