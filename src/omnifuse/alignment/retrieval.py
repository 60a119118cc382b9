"""Cross-modal retrieval in both directions, with positives defined by a shared key.

In paired data with repeated meanings (easy-vqa captions: ~37 test images are each "a red circle";
av-digits: every image of a 7 pairs with every spoken 7) the right answers to a query are all items with
the same key, not only its own pair; :func:`omnifuse.eval.metrics.recall_at_k` scores a query as right
when any of them is in the top k. Identical items (the same caption written 37 times) are one item of a
gallery: :func:`distinct_items` collapses them, so that R@5 means five different answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import hypergeom
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError
from omnifuse.eval.metrics import RetrievalResult, recall_at_k


def _rows(x: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device or x.device, torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device or torch.device("cpu"))


def cosine_similarity(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """[n, m] cosine similarities of the rows of ``x`` and ``y`` (tensors on any device, or arrays), in
    float32 with autocast off: a score, not a model's forward pass."""
    x = _rows(x)
    y = _rows(y, x.device)
    with torch.autocast(x.device.type, enabled=False):
        return (F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).t()).cpu().numpy()


def distinct_items(features: torch.Tensor, keys: Sequence[str]) -> list[int]:
    """Indices of the first row of each distinct (key, feature row) pair, in order."""
    seen: dict[tuple[str, bytes], int] = {}
    rows = features.detach().cpu().contiguous().numpy()
    for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
        seen.setdefault((key, row.tobytes()), i)
    return list(seen.values())


def _positives(query_keys: Sequence[object], item_keys: Sequence[object]) -> list[list[int]]:
    groups: dict[object, list[int]] = {}
    for j, k in enumerate(item_keys):
        groups.setdefault(k, []).append(j)
    missing = sorted({str(k) for k in query_keys if k not in groups})
    if missing:
        raise OmnifuseError(f"queries with keys that no item has: {missing[:5]}")
    return [groups[k] for k in query_keys]


def cross_modal_retrieval(
    sim_ab: np.ndarray,
    keys_a: Sequence[object] | None = None,
    keys_b: Sequence[object] | None = None,
    sim_ba: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    names: tuple[str, str] = ("a", "b"),
) -> dict[str, RetrievalResult]:
    """Recall@k of A→B (rows of ``sim_ab [n_a, n_b]`` as queries) and of B→A (rows of ``sim_ba``, default
    ``sim_ab.T``). Every item whose key equals the query's key is a positive. Without keys, the matrix
    must be square and item i of A pairs with item i of B."""
    sim_ab = np.asarray(sim_ab, dtype=float)
    if sim_ab.ndim != 2:
        raise OmnifuseError(f"the similarity must be an [A items, B items] matrix, got shape {sim_ab.shape}")
    na, nb = sim_ab.shape
    if keys_a is None and keys_b is None:
        if na != nb:
            raise OmnifuseError(f"a {na}×{nb} similarity matrix needs the keys of both sides")
        keys_a = keys_b = list(range(na))
    if keys_a is None or keys_b is None or len(keys_a) != na or len(keys_b) != nb:
        raise OmnifuseError(
            f"give one key per item of both sides: {na} and {nb} items, "
            f"{None if keys_a is None else len(keys_a)} and {None if keys_b is None else len(keys_b)} keys"
        )
    sim_ba = sim_ab.T if sim_ba is None else np.asarray(sim_ba, dtype=float)
    if sim_ba.shape != (nb, na):
        raise OmnifuseError(f"sim_ba has shape {sim_ba.shape}, expected {(nb, na)}")
    a, b = names
    return {
        f"{a}_to_{b}": recall_at_k(sim_ab, _positives(keys_a, keys_b), ks),
        f"{b}_to_{a}": recall_at_k(sim_ba, _positives(keys_b, keys_a), ks),
    }


def chance_recall(
    query_keys: Sequence[object], item_keys: Sequence[object], ks: Sequence[int]
) -> dict[str, float]:
    """Expected R@k of a random ranking: a query with p positives among n items finds none in the top k
    with the hypergeometric probability C(n−p, k)/C(n, k); averaged over the queries."""
    n = len(item_keys)
    p = np.array([len(pos) for pos in _positives(query_keys, item_keys)])
    return {f"R@{k}": float(np.mean(1.0 - hypergeom.pmf(0, n, p, min(k, n)))) for k in ks}
