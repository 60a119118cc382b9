"""The Q-Former connector on tiny random BERTs: shapes, token count, masks, weight loading, builder path."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from omnifuse.connectors.qformer import QFormerConnector, build_qformer, itg_attention_mask, load_bert_weights
from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_connector
from omnifuse.recipe import QFormerConnectorSpec
from tiny import make_qformer, write_tiny_bert


def test_query_outputs_have_num_queries_tokens_at_llm_width():
    qf = make_qformer(in_dim=16, out_dim=24, num_queries=5).eval()
    features = torch.randn(3, 16, 16, requires_grad=True)
    out = qf(features)
    assert out.shape == (3, 5, 24)
    # Whatever the encoder yields, the LLM gets num_queries tokens.
    assert qf.num_output_tokens(16) == qf.num_output_tokens(49) == 5
    assert qf(torch.randn(3, 49, 16)).shape == (3, 5, 24)
    out.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0  # the image reaches the queries
    assert qf.query_tokens.grad is not None and qf.query_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("every, expected", [(1, [0, 1, 2, 3]), (2, [0, 2]), (3, [0, 3])])
def test_cross_attention_every_kth_layer(every, expected):
    qf = make_qformer(cross_attention_every=every)
    layers = qf.qformer.encoder.layer
    assert [i for i, layer in enumerate(layers) if hasattr(layer, "crossattention")] == expected
    # Cross-attention keys/values read the encoder width; the queries live at the BERT width.
    assert layers[0].crossattention.attention.key.in_features == 16
    assert layers[0].crossattention.attention.query.in_features == 32


def test_itg_mask_text_is_causal_and_sees_all_queries():
    q = 3
    text_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    allowed = itg_attention_mask(q, text_mask)
    assert allowed.shape == (2, 1, q + 4, q + 4)
    m = allowed[:, 0]
    for b in range(2):
        assert m[b, :q, :q].all()  # queries see each other
        assert not m[b, :q, q:].any()  # ... and never the text
        assert m[b, q:, :q].all()  # every text position sees every query
    for t in range(4):
        assert m[0, q + t, q : q + t + 1].all()  # text sees itself and earlier text
        if t + 1 < 4:
            assert not m[0, q + t, q + t + 1 :].any()  # text t cannot see t+1
    assert not m[1, q:, q + 2 :].any()  # padding is never attended


def test_itg_mask_is_what_the_model_uses():
    """Changing a later caption token leaves earlier text outputs (and all query outputs) unchanged."""
    qf = make_qformer().eval()
    feats = torch.randn(1, 16, 16)
    ids, mask = qf.tokenize(["a red circle yes"])
    other = ids.clone()
    other[0, 3] = ids[0, 2]
    a = qf.joint_states(feats, ids, mask, causal=True)
    b = qf.joint_states(feats, other, mask, causal=True)
    q = qf.num_queries
    assert torch.allclose(a[:, : q + 3], b[:, : q + 3], atol=1e-6)
    assert not torch.allclose(a[:, q + 3], b[:, q + 3])
    # Bidirectional (ITM) pass: the changed token reaches the queries.
    assert not torch.allclose(
        qf.joint_states(feats, ids, mask)[:, :q], qf.joint_states(feats, other, mask)[:, :q]
    )


def assert_loaded_from_bert(qf: QFormerConnector, bert: BertModel, report) -> None:
    """Shared with the MiniLM integration test: every BERT self-attention/FFN/embedding tensor is in
    the Q-Former (query FFN = copy of the text FFN), cross-attention and heads are new, and a text-only
    pass equals BERT's own output."""
    src = bert.state_dict()
    own = dict(qf.named_parameters())
    n_layers = bert.config.num_hidden_layers
    assert torch.equal(own["embeddings.word_embeddings.weight"], src["embeddings.word_embeddings.weight"])
    assert torch.equal(
        own["embeddings.position_embeddings.weight"],
        src["embeddings.position_embeddings.weight"] + src["embeddings.token_type_embeddings.weight"][0],
    )
    assert torch.equal(own["qformer.layernorm.weight"], src["embeddings.LayerNorm.weight"])
    for i in range(n_layers):
        s, d = f"encoder.layer.{i}", f"qformer.encoder.layer.{i}"
        for w in ("weight", "bias"):
            for proj in ("query", "key", "value"):
                assert torch.equal(
                    own[f"{d}.attention.attention.{proj}.{w}"], src[f"{s}.attention.self.{proj}.{w}"]
                )
            for sub in ("dense", "LayerNorm"):
                assert torch.equal(
                    own[f"{d}.attention.output.{sub}.{w}"], src[f"{s}.attention.output.{sub}.{w}"]
                )
                for out in ("output", "output_query"):
                    assert torch.equal(own[f"{d}.{out}.{sub}.{w}"], src[f"{s}.output.{sub}.{w}"])
            for inter in ("intermediate", "intermediate_query"):
                assert torch.equal(own[f"{d}.{inter}.dense.{w}"], src[f"{s}.intermediate.dense.{w}"])
    new = set(report.new)
    cross = {n for n in own if ".crossattention." in n}
    assert cross and cross <= new
    assert {"query_tokens", "vision_norm.weight", "itm_head.weight", "lm_bias", "temp"} <= new
    assert not new & set(report.loaded)
    assert set(report.loaded) | new == set(own)
    assert set(report.unused) == {
        "pooler.dense.weight",
        "pooler.dense.bias",
        "embeddings.token_type_embeddings.weight",
    }
    # A text-only pass is exactly BERT (token type 0 folded into the positions).
    qf.eval()
    bert.eval()
    ids, mask = qf.tokenize(["a red circle", "is there a green triangle in the image?"])
    with torch.no_grad():
        ours = qf.text_states(ids, mask)
        ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert torch.allclose(ours[keep], ref[keep], atol=1e-4), (ours[keep] - ref[keep]).abs().max()


def test_tiny_bert_weights_load_into_the_qformer(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    qf = build_qformer(str(folder), in_dim=16, out_dim=24, init="random", num_queries=4)
    report = load_bert_weights(qf, BertModel.from_pretrained(folder).state_dict())
    assert_loaded_from_bert(qf, BertModel.from_pretrained(folder), report)


def test_loading_is_strict(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    qf = build_qformer(str(folder), in_dim=16, out_dim=24, init="random", num_queries=4)
    state = BertModel.from_pretrained(folder).state_dict()
    with pytest.raises(OmnifuseError, match="cannot place.*cls.predictions.bias"):
        load_bert_weights(qf, state | {"cls.predictions.bias": torch.zeros(3)})
    state.pop("encoder.layer.1.output.dense.weight")
    with pytest.raises(OmnifuseError, match="lacks 1 BERT tensors.*layer.1.output.dense.weight"):
        load_bert_weights(qf, state)


def test_builder_builds_from_a_spec(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    spec = QFormerConnectorSpec(type="qformer", text_model=str(folder), num_queries=3, projector="mlp")
    qf = build_connector(spec, 16, 24)
    assert isinstance(qf, QFormerConnector) and qf.num_output_tokens(16) == 3
    assert qf(torch.randn(2, 16, 16)).shape == (2, 3, 24)
    bert = BertModel.from_pretrained(folder)
    assert torch.equal(qf.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    random = build_connector(spec.model_copy(update={"init": "random"}), 16, 24)
    assert not torch.equal(random.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)


def test_text_model_must_be_a_bert(tmp_path):
    from tiny import make_llm

    make_llm(50).save_pretrained(tmp_path / "llama")
    with pytest.raises(OmnifuseError, match="not a BERT"):
        build_qformer(str(tmp_path / "llama"), 16, 24)


@pytest.mark.integration
def test_minilm_initialises_the_qformer():
    """The packaged MiniLM: every embedding/self-attention/FFN tensor lands in the Q-Former (query FFN
    included), cross-attention is new, and text-only outputs equal MiniLM's."""
    from omnifuse.assets import AssetKind, resolve

    spec = QFormerConnectorSpec(type="qformer", num_queries=8)
    assert spec.text_model == "all-minilm-l6-v2"
    qf = build_connector(spec, 1280, 576)
    minilm = BertModel.from_pretrained(resolve(spec.text_model, AssetKind.TEXT))
    fresh = build_qformer(spec.text_model, 1280, 576, init="random", num_queries=8)
    report = load_bert_weights(fresh, minilm.state_dict())
    assert len(report.loaded) == 3 + 1 + 6 * (6 + 4 + 4 * 2 + 2 * 2)  # emb + pos + per layer (query FFN too)
    assert_loaded_from_bert(fresh, minilm, report)
    built = dict(qf.named_parameters())
    assert all(torch.equal(built[n], p) for n, p in fresh.named_parameters() if n in report.loaded)
    layer0 = qf.qformer.encoder.layer[0]
    # Fresh cross-attention: random (BERT init), not a copy of any self-attention matrix.
    assert not torch.equal(
        layer0.crossattention.attention.query.weight, layer0.attention.attention.query.weight
    )
    assert layer0.crossattention.attention.query.weight.std() < 0.03
    assert [i for i, layer in enumerate(qf.qformer.encoder.layer) if hasattr(layer, "crossattention")] == [
        0,
        2,
        4,
    ]
    assert qf(torch.randn(2, 49, 1280)).shape == (2, 8, 576)
