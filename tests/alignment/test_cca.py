"""Linear CCA recovers a planted subspace; deep CCA raises the correlation of a nonlinear pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifuse.alignment.cca import DeepCCA, LinearCCA, canonical_correlations, total_correlation
from omnifuse.alignment.heads import mlp
from omnifuse.alignment.retrieval import cosine_similarity, cross_modal_retrieval
from omnifuse.errors import OmnifuseError
from omnifuse.tasks.align.loop import fit


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 20-d views sharing a 2-d latent (plus independent noise dimensions), rotated at random.
    The latent has 3× the noise's scale, so that a 10-component PCA keeps it."""
    rng = np.random.default_rng(seed)
    z = 3 * rng.normal(size=(n, 2))
    mix = np.random.default_rng(123)
    ra, rb = (np.linalg.qr(mix.normal(size=(20, 20)))[0] for _ in range(2))  # random rotations
    a = np.hstack([z + 0.15 * rng.normal(size=(n, 2)), rng.normal(size=(n, 18))]) @ ra
    b = np.hstack([z + 0.15 * rng.normal(size=(n, 2)), rng.normal(size=(n, 18))]) @ rb
    return a, b


def test_cca_recovers_a_planted_correlated_subspace():
    a, b = _planted(2000, seed=0)
    a_test, b_test = _planted(500, seed=1)
    for pca in (None, 10):
        cca = LinearCCA.fit(a, b, n_components=3, pca=pca)
        corr = canonical_correlations(*cca.transform(a_test, b_test))
        assert corr[0] > 0.95 and corr[1] > 0.95
        assert abs(corr[2]) < 0.3  # nothing else is shared


def test_an_unconverged_cca_is_recorded_not_printed():
    import warnings

    a, b = _planted(300, seed=0)
    assert LinearCCA.fit(a, b, n_components=3).converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's ConvergenceWarning would fail here
        cca = LinearCCA.fit(a, b, n_components=3, max_iter=1)
    assert cca.converged is False


def test_pca_drops_empty_directions():
    """A side with 4 distinct rows has rank 3 after centring: PCA keeps 3 components, not the 10 asked."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 20))
    b = rng.normal(size=(4, 12))[rng.integers(0, 4, 200)]
    cca = LinearCCA.fit(a, b, n_components=2, pca=10)
    assert cca.pca_a.n_components_ == 10 and cca.pca_b.n_components_ == 3
    assert set(cca.tensors()) >= {"cca.x_rotations", "pca_b.components", "pca_b.mean"}
    with pytest.raises(OmnifuseError, match="between 1 and 3 .*after PCA"):
        LinearCCA.fit(a, b, n_components=4, pca=10)


def test_cca_refuses_too_many_components():
    a, b = _planted(50, seed=0)
    with pytest.raises(OmnifuseError, match="choose between 1 and 20"):
        LinearCCA.fit(a, b[:, :20], n_components=21)


def test_total_correlation_of_identical_views_is_the_dimension():
    h = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert total_correlation(h, h, r1=0.0, r2=0.0).item() == pytest.approx(3.0, abs=1e-6)
    assert total_correlation(h, -2 * h + 1, r1=0.0, r2=0.0, top_k=2).item() == pytest.approx(2.0, abs=1e-6)
    noise = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert total_correlation(h, noise, r1=0.0, r2=0.0).item() < 0.3


def _nonlinear(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 2, generator=rng) * 4 - 2
    mix = torch.Generator().manual_seed(7)
    wa, wb = torch.randn(4, 10, generator=mix), torch.randn(4, 10, generator=mix)
    a = torch.cat([torch.sin(z), z**2 / 2], 1) @ wa + 0.05 * torch.randn(n, 10, generator=rng)
    b = torch.cat([torch.tanh(2 * z), torch.cos(z)], 1) @ wb + 0.05 * torch.randn(n, 10, generator=rng)
    return a, b


def test_deep_cca_increases_correlation_and_beats_chance():
    torch.manual_seed(0)
    a, b = _nonlinear(1024, seed=0)
    model = DeepCCA(mlp(10, 2, hidden=64), mlp(10, 2, hidden=64), r1=1e-3, r2=1e-3)
    a_test, b_test = _nonlinear(200, seed=1)
    with torch.no_grad():
        before = total_correlation(model.net_a(a_test), model.net_b(b_test)).item()
    fit(model, lambda batch: model(*batch), (a, b), epochs=60, batch_size=256, lr=3e-3, progress=False)
    with torch.no_grad():
        ha, hb = model.net_a(a), model.net_b(b)
        ta, tb = model.net_a(a_test), model.net_b(b_test)
    after = total_correlation(ta, tb).item()
    assert after > before + 0.3 and after > 1.6  # of at most 2
    cca = LinearCCA.fit(ha.numpy(), hb.numpy(), n_components=2)
    ua, ub = cca.transform(ta.numpy(), tb.numpy())
    r10 = cross_modal_retrieval(cosine_similarity(ua, ub))["a_to_b"].recall[10]
    assert r10 > 5 * 10 / 200  # chance is k/n
