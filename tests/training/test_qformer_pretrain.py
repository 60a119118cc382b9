"""BLIP-2 stage 1 losses on tiny random Q-Formers, and stage 1 → stage 2 through the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import parse_recipe
from omnifuse.training import loop
from omnifuse.training.loop import train
from omnifuse.training.qformer_pretrain import itc_loss, qformer_losses, same_caption, sample_hard_negatives
from tiny import make_parts, make_qformer, tiny_recipe_dict, write_tiny_bert


def test_itc_loss_equals_hand_computed_value():
    # Two images with two queries each, two captions; 2-d unit vectors so every dot product is exact.
    image = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    temp = torch.tensor(0.5)
    loss, sim = itc_loss(image, text, temp, same_caption(["a red circle", "a blue square"]))
    # max over queries: i0·t0 = max(1, 0) = 1, i0·t1 = max(0, 1) = 1, i1·t0 = max(.6, -1) = .6, i1·t1 = .8
    assert torch.allclose(sim, torch.tensor([[2.0, 2.0], [1.2, 1.6]]))

    def nll(row, k):  # -log softmax(row)[k]
        return -(row[k] - math.log(sum(math.exp(x) for x in row)))

    i2t = (nll([2.0, 2.0], 0) + nll([1.2, 1.6], 1)) / 2
    t2i = (nll([2.0, 1.2], 0) + nll([2.0, 1.6], 1)) / 2
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)
    # Same caption twice: both texts are positives of both images (soft targets 1/2, 1/2).
    dup, _ = itc_loss(image, text, temp, same_caption(["a red circle", "a red circle"]))
    rows = [[2.0, 2.0], [1.2, 1.6]]
    cols = [[2.0, 1.2], [2.0, 1.6]]
    expected = sum((nll(r, 0) + nll(r, 1)) / 2 for r in rows + cols) / 4
    assert dup.item() == pytest.approx(expected, abs=1e-6)


def test_hard_negatives_never_pick_a_positive_or_a_duplicate_caption():
    captions = [
        "a red circle",
        "a red circle",
        "a blue circle",
        "a green square",
        "a blue circle",
        "a teal one",
    ]
    same = same_caption(captions)
    torch.manual_seed(0)
    sim = torch.randn(6, 6) * 3 + torch.eye(6) * 10  # positives (and duplicates) are the most similar
    sim[0, 1] = sim[1, 0] = 20.0
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_hard_negatives(sim, same, g) for _ in range(300)])
    for row in range(6):
        assert not same[row, picks[:, row]].any(), row  # never itself, never the same caption
    # Drawn ∝ softmax: the most similar valid negative is the most frequent pick.
    row = 3
    valid = (~same[row]).nonzero().squeeze(1)
    best = valid[sim[row, valid].argmax()]
    assert torch.bincount(picks[:, row], minlength=6).argmax() == best
    # A row whose every other item has its caption gets no negative.
    alone = sample_hard_negatives(torch.zeros(2, 2), same_caption(["x", "x"]))
    assert alone.tolist() == [-1, -1]


def test_stage1_steps_reduce_the_summed_loss_on_a_fixed_batch():
    qf = make_qformer(in_dim=16, num_queries=4)
    torch.manual_seed(1)
    features = torch.randn(6, 9, 16)
    captions = ["a red circle", "a blue circle", "a green rectangle", "a red triangle", "a teal circle", "no"]

    def total() -> tuple[float, dict]:
        with torch.no_grad():
            losses = qformer_losses(qf, features, captions, torch.Generator().manual_seed(0))
        return losses.total.item(), losses.parts()

    before, parts = total()
    assert all(math.isfinite(v) and v > 0 for v in parts.values()), parts
    opt = torch.optim.AdamW(qf.parameters(), lr=5e-3)
    for _ in range(30):
        loss = qformer_losses(qf, features, captions).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, parts_after = total()
    assert after < 0.6 * before, (before, after, parts, parts_after)
    # ITC moves slowest from a random init (all queries start alike); ITG and ITM fall within these steps.
    assert parts_after["itg"] < parts["itg"] and parts_after["itm"] < parts["itm"], (parts, parts_after)


def test_every_loss_reaches_its_parameters():
    qf = make_qformer(in_dim=16, num_queries=3)
    features = torch.randn(4, 9, 16)
    losses = qformer_losses(qf, features, ["a red circle", "a blue circle", "a red circle", "a teal one"])
    for name, loss, param in [
        ("itc", losses.itc, qf.vision_proj.weight),
        ("itc", losses.itc, qf.temp),
        ("itm", losses.itm, qf.itm_head.weight),
        ("itg", losses.itg, qf.lm_transform.dense.weight),
        ("itg", losses.itg, qf.qformer.encoder.layer[0].crossattention.attention.key.weight),
    ]:
        (grad,) = torch.autograd.grad(loss, param, retain_graph=True)
        assert grad.abs().sum() > 0, name
    with pytest.raises(OmnifuseError, match="batch_size of at least 2"):
        qformer_losses(qf, features[:1], ["a red circle"])


def test_itg_loss_is_the_causal_lm_loss_over_caption_tokens():
    qf = make_qformer(in_dim=16, num_queries=2).eval()
    features = torch.randn(2, 9, 16)
    captions = ["a red circle", "a blue rectangle is there"]
    with torch.no_grad():
        itg = qformer_losses(qf, features, captions).itg
        nll, n = 0.0, 0
        for i, c in enumerate(captions):  # one caption at a time, no padding, predict each next token
            ids, mask = qf.tokenize([c])
            logits = qf.lm_logits(qf.joint_states(features[i : i + 1], ids, mask, causal=True)[:, 2:])
            nll += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    assert itg.item() == pytest.approx(nll / n, rel=1e-5)


# ---------------------------------------------------------------------- through the trainer
@pytest.fixture
def qformer_recipe(tmp_path, color_data):
    bert = write_tiny_bert(tmp_path / "bert")
    # Captions for the colour images (a caption per image, in the native format).
    captions = [
        Sample(
            f"c{s.id}",
            (
                Message("user", (ImagePart(s.images()[0]),)),
                Message("assistant", (TextPart(f"a {s.answer()} one"),)),
            ),
        )
        for s in load_jsonl(color_data)
    ]
    cap_file = write_jsonl(captions, color_data.parent / "captions.jsonl")
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {
        "type": "qformer",
        "text_model": str(bert),
        "num_queries": 3,
        "max_text_len": 16,
    }
    raw["stages"][0].update(objective={"type": "qformer"}, data=str(cap_file), lr={"connectors": 2e-3})
    return raw


def test_stage1_then_stage2_trains_logs_and_resumes_exactly(tmp_path, qformer_recipe, monkeypatch):
    recipe = parse_recipe(qformer_recipe)
    assert [s.objective.type for s in recipe.stages] == ["qformer", "lm"]
    train(recipe, tmp_path / "full", parts=make_parts(), progress=False)
    run = tmp_path / "full"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["align"] * 4 + ["instruct"] * 4
    for r in records[:4]:
        assert r["loss"] == pytest.approx(r["itc"] + r["itm"] + r["itg"], abs=1e-5)
    assert not any("itc" in r for r in records[4:])
    meta = json.loads((run / "run.json").read_text())
    assert meta["tokens_per_item"] == {"image": 3}
    saved = load_file(str(run / "model.safetensors"))
    assert "connectors.image.query_tokens" in saved and any("crossattention" in k for k in saved)
    assert any("lora_" in k for k in saved) and not any(k.startswith("encoders.") for k in saved)

    real_save = loop.save_checkpoint

    def crash_after(folder, model, names, optimizer, progress, **kw):
        real_save(folder, model, names, optimizer, progress, **kw)
        if (progress["stage"], progress["step"]) == (0, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash_after)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "resumed", parts=make_parts(), progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(recipe, tmp_path / "resumed", resume=True, parts=make_parts(), progress=False)
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert saved.keys() == b.keys()
    for k in saved:
        assert torch.equal(saved[k], b[k]), k
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss", "itc", "itm", "itg")
    assert [[r.get(k) for k in keys] for r in resumed] == [[r.get(k) for k in keys] for r in records]


def test_qformer_objective_needs_a_qformer_and_leaves_the_llm_alone(qformer_recipe, color_data):
    with pytest.raises(OmnifuseError, match="does not run the LLM"):
        parse_recipe(qformer_recipe, overrides=["stages.0.trainable.llm=lora", "stages.0.lr.llm=1e-3"])
    plain = tiny_recipe_dict(color_data)
    with pytest.raises(OmnifuseError, match="needs exactly one connector of type qformer"):
        parse_recipe(plain, overrides=["stages.0.objective.type=qformer"])


def test_qformer_stage_refuses_samples_without_one_image(tmp_path, qformer_recipe):
    raw = qformer_recipe
    bad = [Sample("t", (Message("user", (TextPart("hi"),)), Message("assistant", (TextPart("a red one"),))))]
    raw["stages"][0]["data"] = str(write_jsonl(bad, tmp_path / "bad.jsonl"))
    raw["stages"][0]["batch_size"] = 2
    with pytest.raises(OmnifuseError, match="sample t: .*one image each.*has 0"):
        train(parse_recipe(raw), tmp_path / "run", parts=make_parts(), progress=False)


def test_a_qformer_stage_can_sum_a_subset_of_the_losses(tmp_path, qformer_recipe):
    qformer_recipe["stages"] = qformer_recipe["stages"][:1]
    qformer_recipe["stages"][0]["objective"] = {"type": "qformer", "losses": ["itc", "itg"]}
    recipe = parse_recipe(qformer_recipe)
    assert recipe.stages[0].objective.losses == ("itc", "itg")
    train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for r in records:  # all three are logged; the loss is the chosen two
        assert r["loss"] == pytest.approx(r["itc"] + r["itg"], abs=1e-5) and r["itm"] > 0
