"""Cross-modal retrieval in both directions, with positives defined by a shared key.

In paired data with repeated meanings (easy-vqa captions: ~170 images are each "a red circle"; av-digits:
every image of a 7 pairs with every spoken 7) the right answers to a query are all items with the same
key, not only its own pair; :func:`omnifuse.eval.metrics.recall_at_k` scores a query as right when any
of them is in the top k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError
from omnifuse.eval.metrics import RetrievalResult, recall_at_k


def cosine_similarity(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """[n, m] cosine similarities of the rows of ``x`` and ``y``."""
    x, y = (
        torch.as_tensor(np.asarray(x), dtype=torch.float32),
        torch.as_tensor(np.asarray(y), dtype=torch.float32),
    )
    return (F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).t()).numpy()


def cross_modal_retrieval(
    sim_ab: np.ndarray,
    keys: Sequence[object] | None = None,
    sim_ba: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    names: tuple[str, str] = ("a", "b"),
) -> dict[str, RetrievalResult]:
    """Recall@k of A→B (rows of ``sim_ab [n, n]`` as queries) and of B→A (rows of ``sim_ba``, default
    ``sim_ab.T``), item i of each side forming pair i. ``keys[i]``: the meaning of pair i (a caption, a
    label); every item with the query's key is a positive. Default: each pair its own key."""
    sim_ab = np.asarray(sim_ab, dtype=float)
    n = sim_ab.shape[0]
    if sim_ab.shape != (n, n):
        raise OmnifuseError(f"paired retrieval needs a square similarity matrix, got shape {sim_ab.shape}")
    sim_ba = sim_ab.T if sim_ba is None else np.asarray(sim_ba, dtype=float)
    if sim_ba.shape != (n, n):
        raise OmnifuseError(f"sim_ba has shape {sim_ba.shape}, expected {(n, n)}")
    if keys is None:
        positives: list = list(range(n))
    else:
        if len(keys) != n:
            raise OmnifuseError(f"{len(keys)} keys for {n} pairs")
        groups: dict[object, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        positives = [groups[k] for k in keys]
    a, b = names
    return {
        f"{a}_to_{b}": recall_at_k(sim_ab, positives, ks),
        f"{b}_to_{a}": recall_at_k(sim_ba, positives, ks),
    }
