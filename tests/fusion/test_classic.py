"""Classic fusion heads: shapes for every head, missing modalities, and an XOR task that only fusions
modelling the interaction of the modalities can solve."""

from __future__ import annotations

import pytest
import torch

from omnifuse.models.classifier import build_classifier
from omnifuse.recipe import ClassifierModelSpec

POOLED = ["concat", "attention", "gated", "tensor", "low_rank_tensor", "late_average", "late_weighted",
          "late_stacking"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is much faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_spec(fusion: dict, encoders=None, **extra) -> ClassifierModelSpec:
    encoders = encoders or {"image": {"type": "mobilenet_v2"}, "audio": {"type": "logmel"}}
    return ClassifierModelSpec.model_validate({"encoders": encoders, "fusion": fusion, **extra})


def inputs(shapes: dict, b: int = 4) -> dict[str, torch.Tensor]:
    return {m: torch.randn(b, *s) for m, s in shapes.items()}


@pytest.mark.parametrize("fusion", POOLED)
def test_pooled_heads_give_class_logits_with_and_without_a_modality(fusion):
    shapes = {"audio": (7,), "image": (5,)}
    model = build_classifier(model_spec({"type": fusion, "dim": 6}), shapes, num_classes=3).eval()
    x = inputs(shapes)
    assert model(x).shape == (4, 3)
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0]])
    out = model(x, present)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    # A dropped modality's features do not matter at all.
    x2 = dict(x, image=torch.randn(4, 5) * 100)
    mask = present[:, model.modalities.index("image")] == 0
    assert torch.allclose(model(x2, present)[mask], out[mask], atol=1e-5)


def test_fused_widths():
    shapes = {"audio": (7,), "image": (5,)}
    tensor = build_classifier(model_spec({"type": "tensor", "dim": 4}), shapes, 3)
    assert tensor.fusion.out_dim == 25  # (4 + 1)²
    lmf = build_classifier(model_spec({"type": "low_rank_tensor", "dim": 4, "rank": 3, "out": 10}), shapes, 3)
    assert lmf.fusion(  # rank-3 factors of width 10
        [torch.randn(2, 4), torch.randn(2, 4)], torch.ones(2, 2)
    ).shape == (2, 10)
    concat = build_classifier(model_spec({"type": "concat", "dim": 6}), shapes, 3)
    assert concat.fusion.out_dim == 12


def test_transformer_and_token_attention_read_tokens():
    shapes = {"audio": (3, 7), "image": (4, 5)}
    for fusion in ({"type": "transformer", "dim": 8, "heads": 2}, {"type": "attention", "dim": 8}):
        spec = model_spec(fusion, features="tokens")
        model = build_classifier(spec, shapes, 3).eval()
        x = inputs(shapes)
        assert model(x).shape == (4, 3)
        present = torch.tensor([[1, 0]] * 4)
        x2 = dict(x, image=torch.randn(4, 4, 5))
        assert torch.allclose(model(x, present), model(x2, present), atol=1e-5)


def test_data_level_fusion_stacks_maps_as_channels():
    enc = {"image": {"type": "pixels", "size": 8}, "audio": {"type": "logmel", "n_mels": 8, "tokens": 8}}
    model = build_classifier(
        model_spec({"type": "data", "channels": 4}, enc), {"image": (8, 8), "audio": (8, 8)}, 5
    )
    assert model.eval()(inputs({"image": (8, 8), "audio": (8, 8)})).shape == (4, 5)
    assert model.fusion.cnn[0][0].in_channels == 2


# ------------------------------------------------------------------ XOR: interactions are needed
def xor_data(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """label = [sign(a) · sign(b) > 0]: each modality alone says nothing about the label."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    y = ((a[:, 0] > 0) == (b[:, 0] > 0)).long()
    return {"audio": a, "image": b}, y


def fit(model, x, y, tokens: bool = False, steps: int = 300) -> float:
    """Train full-batch on (x, y); accuracy on fresh XOR data (token inputs: one token per modality)."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = xor_data(1000, seed=1)
    if tokens:
        xt = {m: v.unsqueeze(1) for m, v in xt.items()}
    with torch.no_grad():
        return (model.eval()(xt).argmax(-1) == yt).float().mean().item()


def test_unimodal_classifiers_are_at_chance_on_xor():
    x, y = xor_data(1000, seed=1)
    for m in x:  # the best rule from one modality alone: its sign
        assert abs(((x[m][:, 0] > 0).long() == y).float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize(
    "fusion, extra",
    [
        ({"type": "tensor", "dim": 4}, {"hidden": 0, "dropout": 0.0}),  # linear head on the product
        ({"type": "concat", "dim": 16}, {"dropout": 0.0}),
        ({"type": "transformer", "dim": 16, "heads": 2, "layers": 1}, {"features": "tokens", "dropout": 0.0}),
    ],
)
def test_interaction_fusions_solve_xor(fusion, extra):
    torch.manual_seed(0)
    x, y = xor_data(512, seed=0)
    tokens = extra.get("features") == "tokens"
    if tokens:
        x = {m: v.unsqueeze(1) for m, v in x.items()}
    shapes = {m: tuple(v.shape[1:]) for m, v in x.items()}
    model = build_classifier(model_spec(fusion, **extra), shapes, 2)
    acc = fit(model, x, y, tokens)
    assert acc > 0.9, acc


@pytest.mark.parametrize("fusion", ["late_average", "late_weighted"])
def test_late_averaging_cannot_solve_xor(fusion):
    torch.manual_seed(0)
    x, y = xor_data(512, seed=0)
    model = build_classifier(
        model_spec({"type": fusion, "dim": 16}, dropout=0.0), {"audio": (2,), "image": (2,)}, 2
    )
    assert fit(model, x, y) < 0.6


def test_with_a_holdout_the_combiner_learns_only_from_held_out_samples():
    torch.manual_seed(0)
    shapes = {"audio": (3,), "image": (3,)}
    model = build_classifier(model_spec({"type": "late_stacking", "dim": 4}), shapes, 2)
    assert model.has_combiner()
    assert not build_classifier(model_spec({"type": "late_average", "dim": 4}), shapes, 2).has_combiner()
    x, y = inputs(shapes, b=6), torch.tensor([0, 1, 0, 1, 0, 1])
    for held, trains_voters, trains_meta in ((torch.zeros(6, dtype=torch.bool), True, False),
                                             (torch.ones(6, dtype=torch.bool), False, True)):  # fmt: skip
        model.zero_grad()
        model.loss(x, y, holdout=held)[0].backward()
        voter_grad = model.projections["audio"][0].weight.grad
        assert (voter_grad is not None and voter_grad.abs().sum() > 0) == trains_voters
        meta_grad = model.fusion.meta.weight.grad
        assert (meta_grad is not None and meta_grad.abs().sum() > 0) == trains_meta
