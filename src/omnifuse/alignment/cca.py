"""Canonical correlation analysis: linear (scikit-learn) and deep (Andrew et al. 2013).

CCA finds directions u_k, v_k such that the projections <u_k, a> and <v_k, b> are maximally correlated
and uncorrelated with the earlier pairs. Cross-modal retrieval then compares items by cosine
similarity of their canonical variates.

Linear CCA is scikit-learn's ``CCA``. Deep CCA is written here because no kept library has it: two
networks f, g are trained to maximise the *total* canonical correlation of their outputs, i.e. the sum
of the singular values of T = Σ11^{-1/2} Σ12 Σ22^{-1/2}, where the covariances are estimated on the
batch and regularised with ridge terms r1·I, r2·I. After training, a linear CCA on the networks'
outputs (the paper's final step) gives the canonical variates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from omnifuse.errors import OmnifuseError


def canonical_correlations(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of columns (canonical variate pairs) of ``u`` and ``v``."""
    u = np.asarray(u, dtype=float) - np.mean(u, axis=0)
    v = np.asarray(v, dtype=float) - np.mean(v, axis=0)
    denom = np.linalg.norm(u, axis=0) * np.linalg.norm(v, axis=0)
    return (u * v).sum(axis=0) / np.where(denom > 0, denom, 1.0)


def fit_pca(x: np.ndarray, max_dim: int) -> PCA:
    """scikit-learn's PCA with at most ``max_dim`` components and none of (numerically) zero variance: the
    text side of easy-vqa captions has 24 distinct rows, so rank 23, and CCA's per-column scaling would blow
    rounding noise in the empty directions up to unit variance."""
    pca = PCA(n_components=min(max_dim, *x.shape), svd_solver="full").fit(x)  # exact, so deterministic
    keep = int((pca.explained_variance_ratio_ > 1e-6).sum())
    return pca if keep == pca.n_components_ else PCA(n_components=keep, svd_solver="full").fit(x)


@dataclass
class LinearCCA:
    """scikit-learn's CCA, optionally on PCA-reduced inputs (fewer dimensions than samples by far: CCA
    in 1280 dimensions overfits, and scikit-learn's iterative CCA slows down with the width)."""

    cca: CCA
    pca_a: PCA | None = None
    pca_b: PCA | None = None
    # False when scikit-learn's iterative fit stopped at max_iter for some component (its
    # ConvergenceWarning, recorded instead of printed): slow when canonical correlations are nearly equal.
    converged: bool = True

    @classmethod
    def fit(
        cls, a: np.ndarray, b: np.ndarray, n_components: int, pca: int | None = None, max_iter: int = 1000
    ) -> LinearCCA:
        pca_a = fit_pca(a, pca) if pca is not None else None
        pca_b = fit_pca(b, pca) if pca is not None else None
        ra = pca_a.transform(a) if pca_a is not None else np.asarray(a)
        rb = pca_b.transform(b) if pca_b is not None else np.asarray(b)
        limit = min(ra.shape[1], rb.shape[1], ra.shape[0])
        if not 1 <= n_components <= limit:
            raise OmnifuseError(
                f"CCA with {n_components} components: choose between 1 and {limit} (the smaller feature "
                f"dimension of {ra.shape[1]} and {rb.shape[1]}{' after PCA' if pca is not None else ''}, "
                f"at most the {ra.shape[0]} samples)"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            cca = CCA(n_components=n_components, max_iter=max_iter).fit(ra, rb)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return cls(cca, pca_a, pca_b, converged)

    def transform(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical variates of ``a`` and ``b`` (any numbers of rows)."""
        ra = self.pca_a.transform(a) if self.pca_a is not None else np.asarray(a)
        rb = self.pca_b.transform(b) if self.pca_b is not None else np.asarray(b)
        return self.cca.transform(ra, rb)

    def tensors(self) -> dict[str, np.ndarray]:
        """What ``transform`` uses, as arrays (to store without pickle)."""
        out = {f"cca.{n.strip('_')}": np.asarray(getattr(self.cca, n)) for n in _CCA_ARRAYS}
        for side, pca in (("a", self.pca_a), ("b", self.pca_b)):
            if pca is not None:
                out[f"pca_{side}.mean"], out[f"pca_{side}.components"] = pca.mean_, pca.components_
        return out


_CCA_ARRAYS = ("_x_mean", "_x_std", "_y_mean", "_y_std", "x_rotations_", "y_rotations_")


@dataclass(frozen=True)
class StoredCCA:
    """A fitted :class:`LinearCCA` read back from its :meth:`LinearCCA.tensors` (a trained run's weights):
    the same ``transform``, computed from the stored arrays (PCA: centre and project; CCA: standardise and
    rotate, as scikit-learn does)."""

    arrays: dict[str, np.ndarray]
    converged: bool = True

    @classmethod
    def from_tensors(cls, tensors: dict, converged: bool = True) -> StoredCCA:
        names = [f"cca.{n.strip('_')}" for n in _CCA_ARRAYS]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise OmnifuseError(f"the stored CCA lacks {', '.join(missing)}; the weights file is damaged")
        keep = [k for k in tensors if k.startswith(("cca.", "pca_a.", "pca_b."))]
        return cls({k: np.asarray(tensors[k], dtype=np.float64) for k in keep}, converged)

    def _reduce(self, x: np.ndarray, side: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if f"pca_{side}.mean" not in self.arrays:
            return x
        return (x - self.arrays[f"pca_{side}.mean"]) @ self.arrays[f"pca_{side}.components"].T

    def transform(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.arrays
        ra, rb = self._reduce(a, "a"), self._reduce(b, "b")
        ua = (ra - t["cca.x_mean"]) / t["cca.x_std"] @ t["cca.x_rotations"]
        ub = (rb - t["cca.y_mean"]) / t["cca.y_std"] @ t["cca.y_rotations"]
        return ua, ub


def _inv_sqrt(cov: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    w, v = torch.linalg.eigh(cov)
    return v @ torch.diag(w.clamp(min=eps).rsqrt()) @ v.t()


def total_correlation(
    h1: torch.Tensor, h2: torch.Tensor, r1: float = 1e-3, r2: float = 1e-3, top_k: int | None = None
) -> torch.Tensor:
    """Deep CCA's objective (Andrew et al. 2013, §2.1) on a batch of paired outputs ``h1 [m, o1]``,
    ``h2 [m, o2]``: the sum of the (top_k, default all) singular values of Σ11^{-1/2} Σ12 Σ22^{-1/2},
    with Σ11 = H̄1ᵀH̄1/(m−1) + r1·I, Σ22 likewise with r2, Σ12 = H̄1ᵀH̄2/(m−1) on centred outputs.
    Differentiable (eigh and svdvals); the loss is its negative. Computed in float32 with autocast off
    (eigh has no bfloat16 / float16 kernels, and the covariances need the precision), whatever the
    dtype of the networks' outputs."""
    m = h1.shape[0]
    if m < 2 or h2.shape[0] != m:
        raise OmnifuseError(f"deep CCA needs two batches of the same size ≥ 2, got {m} and {h2.shape[0]}")
    with torch.autocast(h1.device.type, enabled=False):
        return _total_correlation(h1.float(), h2.float(), r1, r2, top_k)


def _total_correlation(
    h1: torch.Tensor, h2: torch.Tensor, r1: float, r2: float, top_k: int | None
) -> torch.Tensor:
    m = h1.shape[0]
    h1 = h1 - h1.mean(dim=0)
    h2 = h2 - h2.mean(dim=0)
    s11 = h1.t() @ h1 / (m - 1) + r1 * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    s22 = h2.t() @ h2 / (m - 1) + r2 * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = h1.t() @ h2 / (m - 1)
    t = _inv_sqrt(s11) @ s12 @ _inv_sqrt(s22)
    singular = torch.linalg.svdvals(t)
    return singular.sum() if top_k is None else singular[:top_k].sum()


class DeepCCA(nn.Module):
    """Two networks whose outputs are trained to be maximally canonically correlated.

    ``forward(a, b)`` returns the loss −total_correlation(f(a), g(b)); batches must be larger than the
    output dimension for the covariance estimates to mean anything."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module, r1: float = 1e-3, r2: float = 1e-3) -> None:
        super().__init__()
        self.net_a, self.net_b = net_a, net_b
        self.r1, self.r2 = r1, r2

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -total_correlation(self.net_a(a), self.net_b(b), self.r1, self.r2)
