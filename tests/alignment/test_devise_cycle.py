"""DeViSE predicts unseen compositions; the cycle autoencoder learns to come back."""

from __future__ import annotations

import pytest
import torch

from omnifuse.alignment.cycle import CycleAutoencoder
from omnifuse.alignment.devise import DeViSE, hinge_rank_loss, zero_shot
from omnifuse.alignment.heads import mlp
from omnifuse.alignment.retrieval import cosine_similarity, cross_modal_retrieval
from omnifuse.errors import OmnifuseError
from omnifuse.tasks.align.loop import fit


def test_hinge_rank_loss_by_hand():
    scores = torch.tensor([[0.5, 0.45, 0.1], [0.2, 0.3, 0.9]])
    labels = torch.tensor([0, 1])
    # row 0: max(0, .1-.5+.45)=.05, max(0, .1-.5+.1)=0; row 1: max(0,.1-.3+.2)=0, max(0,.1-.3+.9)=.7
    assert hinge_rank_loss(scores, labels).item() == pytest.approx((0.05 + 0.7) / 2)


def _compositional(n: int, seed: int):
    """4 colours × 3 shapes. A class's text embedding is the sum of word vectors; an 'image' is a noisy
    random linear view of its (colour, shape) one-hot code."""
    words = torch.randn(7, 16, generator=torch.Generator().manual_seed(5))
    classes = [(c, s) for c in range(4) for s in range(3)]
    text = torch.stack([words[c] + words[4 + s] for c, s in classes])
    view = torch.randn(7, 32, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(classes), (n,), generator=g)
    code = torch.zeros(n, 7)
    for i, k in enumerate(labels.tolist()):
        c, s = classes[k]
        code[i, c] = code[i, 4 + s] = 1
    return code @ view + 0.1 * torch.randn(n, 32, generator=g), labels, text


def test_devise_zero_shot_on_held_out_compositions_beats_chance():
    torch.manual_seed(0)
    heldout = [0, 4, 8, 11]  # (0,0) (1,1) (2,2) (3,2): every word still seen in another class
    seen = [k for k in range(12) if k not in heldout]
    x, y, text = _compositional(600, seed=0)
    keep = torch.isin(y, torch.tensor(seen))
    remap = {k: i for i, k in enumerate(seen)}
    y_train = torch.tensor([remap[k] for k in y[keep].tolist()])
    model = DeViSE(mlp(32, 16), text[seen])
    fit(
        model,
        lambda batch: model(*batch),
        (x[keep], y_train),
        epochs=100,
        batch_size=64,
        lr=1e-2,
        progress=False,
    )
    x_test, y_test, _ = _compositional(400, seed=1)
    held = torch.isin(y_test, torch.tensor(heldout))
    result = zero_shot(model, x_test[held], y_test[held].tolist(), text, heldout)
    assert result.chance_all == pytest.approx(1 / 12) and result.chance_heldout == pytest.approx(1 / 4)
    assert result.accuracy_heldout > 0.8
    assert result.accuracy_all > 3 * result.chance_all
    with pytest.raises(OmnifuseError, match="not held out"):
        zero_shot(model, x_test, y_test.tolist(), text, heldout)


def test_cycle_autoencoder_reduces_cycle_error_and_translates():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(800, 4, generator=g)
    wa, wb = torch.randn(4, 12, generator=g), torch.randn(4, 8, generator=g)
    a, b = torch.tanh(z @ wa), z @ wb + 0.05 * torch.randn(800, 8, generator=g)
    model = CycleAutoencoder(mlp(12, 4, 32), mlp(4, 12, 32), mlp(8, 4, 32), mlp(4, 8, 32))
    with torch.no_grad():
        before = model.losses(a, b)
    fit(
        model,
        lambda batch: model(*batch),
        (a[:600], b[:600]),
        epochs=80,
        batch_size=64,
        lr=3e-3,
        progress=False,
    )
    with torch.no_grad():
        after = model.losses(a[600:], b[600:])
        sim = cosine_similarity(model.a_to_b(a[600:]), b[600:])
    assert after.cycle.item() < before.cycle.item() / 5
    assert after.translation.item() < before.translation.item() / 5
    assert cross_modal_retrieval(sim)["a_to_b"].recall[10] > 0.5  # chance: 10 / 200
