"""CLIP and SigLIP losses against hand computations, and dual encoders that must solve a toy problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifuse.alignment.contrastive import (
    ClipCriterion,
    DualEncoder,
    SigLipCriterion,
    clip_loss,
    siglip_loss,
)
from omnifuse.alignment.heads import mlp
from omnifuse.alignment.retrieval import (
    chance_recall,
    cosine_similarity,
    cross_modal_retrieval,
    distinct_items,
)
from omnifuse.errors import OmnifuseError
from omnifuse.tasks.align.loop import fit

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.5, 0.7]])


def test_info_nce_equals_hand_computation_on_three_pairs():
    def ce_row(row, target):  # −log softmax(row)[target]
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    rows = LOGITS.tolist()
    cols = LOGITS.t().tolist()
    expected = (
        sum(ce_row(rows[i], i) for i in range(3)) / 3 + sum(ce_row(cols[i], i) for i in range(3)) / 3
    ) / 2
    assert clip_loss(LOGITS).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_with_shared_meaning_spreads_the_target():
    # Items 0 and 1 share a key: row 0's target is ½ on columns 0 and 1.
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    logp = torch.log_softmax(LOGITS, 1)
    logq = torch.log_softmax(LOGITS.t(), 1)
    a = -((logp[0, 0] + logp[0, 1]) / 2 + (logp[1, 0] + logp[1, 1]) / 2 + logp[2, 2]) / 3
    b = -((logq[0, 0] + logq[0, 1]) / 2 + (logq[1, 0] + logq[1, 1]) / 2 + logq[2, 2]) / 3
    assert clip_loss(LOGITS, pos).item() == pytest.approx(((a + b) / 2).item(), abs=1e-6)


def test_siglip_matches_the_formula():
    t_prime, bias = math.log(10.0), -10.0
    za = torch.nn.functional.normalize(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    zb = torch.nn.functional.normalize(torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    crit = SigLipCriterion(t_prime, bias)
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            logit = math.exp(t_prime) * float(za[i] @ zb[j]) + bias
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    assert crit(za, zb).item() == pytest.approx(total / 4, rel=1e-5)
    assert siglip_loss(crit.logits(za, zb)).item() == pytest.approx(total / 4, rel=1e-5)


def test_initial_scales_are_the_papers():
    clip = ClipCriterion()
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert clip.extra_metrics()["temperature"] == pytest.approx(0.07)
    sig = SigLipCriterion()
    assert sig.extra_metrics() == pytest.approx({"t": 10.0, "bias": -10.0})


def test_clip_scale_is_clamped_at_100():
    clip = ClipCriterion()
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)
    z = torch.eye(2)
    assert clip.logits(z, z)[0, 0].item() == pytest.approx(100.0)


def test_positives_must_be_square_and_include_the_diagonal():
    with pytest.raises(OmnifuseError, match=r"\[3, 3\] mask"):
        clip_loss(LOGITS, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(OmnifuseError, match="diagonal"):
        siglip_loss(LOGITS, torch.zeros(3, 3, dtype=torch.bool))


def _linear_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 16, generator=g)
    w = torch.randn(16, 12, generator=torch.Generator().manual_seed(99))
    return a, a @ w + 0.01 * torch.randn(n, 12, generator=g)


@pytest.mark.parametrize("criterion", [ClipCriterion, SigLipCriterion])
def test_dual_encoder_learns_a_linear_relation_to_recall_1(criterion):
    torch.manual_seed(0)
    a, b = _linear_pairs(64, seed=0)
    model = DualEncoder(mlp(16, 16), mlp(12, 16), criterion())
    with torch.no_grad():
        before = model(a, b).item()
    history = fit(
        model, lambda batch: model(*batch), (a, b), epochs=150, batch_size=32, lr=1e-2, progress=False
    )
    assert history[-1] < before / 2
    a_test, b_test = _linear_pairs(64, seed=1)
    with torch.no_grad():
        sim = cosine_similarity(model.embed_a(a_test), model.embed_b(b_test))
    result = cross_modal_retrieval(sim, names=("a", "b"))
    assert result["a_to_b"].recall[1] == 1.0
    assert result["b_to_a"].recall[1] == 1.0


def test_retrieval_counts_every_item_with_the_key_as_positive():
    sim = np.array([[0.1, 0.9, 0.0], [0.2, 0.1, 0.8], [0.0, 0.5, 0.9]])
    by_pair = cross_modal_retrieval(sim, ks=(1,))
    by_key = cross_modal_retrieval(sim, ["x", "x", "y"], ["x", "x", "y"], ks=(1,))
    assert by_pair["a_to_b"].recall[1] == pytest.approx(1 / 3)  # only row 2 has its own pair on top
    assert by_key["a_to_b"].recall[1] == pytest.approx(2 / 3)  # row 0's top (item 1) shares key x
    with pytest.raises(OmnifuseError, match="one key per item"):
        cross_modal_retrieval(sim, ["x", "y"], ["x", "y", "z"])


def test_retrieval_against_a_gallery_of_distinct_items():
    # Three images, two distinct captions; image 2's caption is ranked second.
    sim = np.array([[0.9, 0.1], [0.8, 0.3], [0.7, 0.2]])
    res = cross_modal_retrieval(sim, ["x", "x", "y"], ["x", "y"], ks=(1, 2), names=("image", "text"))
    assert res["image_to_text"].recall == {1: pytest.approx(2 / 3), 2: 1.0}
    assert res["text_to_image"].recall[1] == 0.0 + 0.5  # x finds image 0; y's best image is 1 (x)
    assert chance_recall(["x", "x", "y"], ["x", "y"], (1, 2)) == {"R@1": pytest.approx(0.5), "R@2": 1.0}
    # 2 positives among 4 items, top 1: 1/2; top 2: 1 − C(2,2)/C(4,2) = 5/6
    assert chance_recall(["p"], ["p", "p", "q", "r"], (1, 2)) == pytest.approx({"R@1": 0.5, "R@2": 5 / 6})


def test_distinct_items_collapses_identical_rows_with_the_same_key():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert distinct_items(feats, ["x", "x", "y", "z"]) == [0, 2, 3]
