"""The BLIP-2 Q-Former: learned queries read the image through cross-attention inside a BERT.

The transformer itself is transformers' ``Blip2QFormerModel`` (BERT layers; cross-attention to the
image in every ``cross_attention_every``-th layer, applied to the query positions only; separate FFNs
for queries and text). Queries and text share the self-attention layers, and what they may see of
each other is set by the attention mask alone (BLIP-2 §3.2):

* ITC: queries alone (with the image), text alone — two passes that never meet;
* ITM: queries + text, bidirectional;
* ITG: queries see queries; text sees all queries and earlier text (:func:`itg_attention_mask`).

Initialisation (as in BLIP-2, which starts from BERT-base): embeddings, self-attention and both FFNs
(text and query) come from a pretrained BERT — by default the packaged MiniLM — while the
cross-attention layers, the query tokens and the heads are new (:func:`load_bert_weights` reports
which is which). For the LLM, :meth:`QFormerConnector.forward` returns the query outputs projected to
the LLM width, so ``num_output_tokens(n) == num_queries`` whatever the encoder yields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    BertConfig,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    PreTrainedTokenizerBase,
)
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from omnifuse.connectors.linear import LinearConnector
from omnifuse.connectors.mlp import MLPConnector
from omnifuse.encoders.text.minilm import load_bert, load_text_model
from omnifuse.errors import OmnifuseError

log = logging.getLogger(__name__)

# BERT tensors with no place in the Q-Former: BLIP-2 uses the [CLS] output directly, not BERT's pooler.
_UNUSED_BERT = ("pooler.dense.weight", "pooler.dense.bias")


class QFormerConnector(nn.Module):
    """Queries + Q-Former + projection to the LLM, plus the stage-1 heads (ITC projections, ITM head,
    LM head tied to the word embeddings). Built parts in; see :meth:`from_bert_config`."""

    def __init__(
        self,
        qformer: Blip2QFormerModel,
        embeddings: Blip2TextEmbeddings,
        lm_transform: nn.Module,
        projector: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        in_dim: int,
        num_queries: int,
        embed_dim: int = 256,
        max_text_len: int = 32,
    ) -> None:
        super().__init__()
        hidden = qformer.config.hidden_size
        vocab = embeddings.word_embeddings.num_embeddings
        self.qformer = qformer
        self.embeddings = embeddings
        self.query_tokens = nn.Parameter(torch.empty(1, num_queries, hidden))
        # BLIP-2's ln_vision: the image features are layer-normed at their own width; the cross-attention
        # keys/values project them to the BERT width (Blip2QFormerConfig.encoder_hidden_size = in_dim).
        self.vision_norm = nn.LayerNorm(in_dim)
        self.projector = projector  # query outputs → LLM width (stage 2)
        self.vision_proj = nn.Linear(hidden, embed_dim)  # ITC
        self.text_proj = nn.Linear(hidden, embed_dim)  # ITC
        self.itm_head = nn.Linear(hidden, 2)
        self.lm_transform = lm_transform  # ITG; the decoder matrix is the word embeddings (tied)
        self.lm_bias = nn.Parameter(torch.zeros(vocab))
        self.temp = nn.Parameter(torch.tensor(0.07))  # ITC temperature (learnable, clamped in use)
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.num_queries = num_queries
        std = qformer.config.initializer_range
        nn.init.normal_(self.query_tokens, std=std)
        for linear in (self.vision_proj, self.text_proj, self.itm_head):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    @classmethod
    def from_bert_config(
        cls,
        config: BertConfig,
        tokenizer: PreTrainedTokenizerBase,
        in_dim: int,
        out_dim: int,
        num_queries: int = 32,
        cross_attention_every: int = 2,
        embed_dim: int = 256,
        max_text_len: int = 32,
        projector: str = "linear",
        hidden: int | None = None,
    ) -> QFormerConnector:
        """A randomly initialised Q-Former shaped like the BERT ``config`` (tests; ``init: random``)."""
        if config.max_position_embeddings < max_text_len:
            raise OmnifuseError(
                f"qformer max_text_len {max_text_len} exceeds the text model's "
                f"{config.max_position_embeddings} positions; lower max_text_len"
            )
        qconfig = Blip2QFormerConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            max_position_embeddings=config.max_position_embeddings,
            initializer_range=config.initializer_range,
            layer_norm_eps=config.layer_norm_eps,
            pad_token_id=config.pad_token_id,
            cross_attention_frequency=cross_attention_every,
            encoder_hidden_size=in_dim,
            use_qformer_text_input=True,  # the text FFN: ITC/ITM/ITG run text through the same layers
        )
        qformer = Blip2QFormerModel(qconfig).float()
        embeddings = Blip2TextEmbeddings(qconfig)
        nn.init.normal_(embeddings.word_embeddings.weight, std=qconfig.initializer_range)
        nn.init.normal_(embeddings.position_embeddings.weight, std=qconfig.initializer_range)
        proj = (
            LinearConnector(config.hidden_size, out_dim)
            if projector == "linear"
            else MLPConnector(config.hidden_size, out_dim, hidden)
        )
        return cls(
            qformer,
            embeddings,
            BertPredictionHeadTransform(config),
            proj,
            tokenizer,
            in_dim,
            num_queries,
            embed_dim,
            max_text_len,
        )

    # ------------------------------------------------------------------ the connector contract
    def output_grid(self, input_grid: tuple[int, int] | None) -> None:
        """Learned queries read the whole image: no output token belongs to an image region."""
        return None

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [B, P, D_enc] -> [B, num_queries, D_llm]
        return self.projector(self.query_states(features))

    # ------------------------------------------------------------------ the three views
    def _image(self, features: torch.Tensor) -> torch.Tensor:
        return self.vision_norm(features)

    def _queries(self, batch: int) -> torch.Tensor:
        return self.query_tokens.expand(batch, -1, -1)

    def query_states(self, features: torch.Tensor) -> torch.Tensor:
        """Queries alone, cross-attending to the image: [B, num_queries, hidden]."""
        out = self.qformer(
            query_embeds=self._queries(features.shape[0]), encoder_hidden_states=self._image(features)
        )
        return out.last_hidden_state

    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text alone (no queries, no image): a plain BERT pass. [B, T, hidden]."""
        out = self.qformer(
            query_embeds=self.embeddings(input_ids=input_ids), query_length=0, attention_mask=attention_mask
        )
        return out.last_hidden_state

    def joint_states(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        causal: bool = False,
    ) -> torch.Tensor:
        """Queries followed by text in one sequence, queries cross-attending to the image: [B, Q+T, hidden].
        Bidirectional (ITM) or with the ITG mask (``causal``)."""
        b, q = input_ids.shape[0], self.num_queries
        embeds = self.embeddings(input_ids=input_ids, query_embeds=self._queries(b))
        if causal:
            allowed = itg_attention_mask(q, attention_mask)
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
            mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)
        else:
            mask = torch.cat([attention_mask.new_ones(b, q), attention_mask], dim=1)
        out = self.qformer(
            query_embeds=embeds,
            query_length=q,
            attention_mask=mask,
            encoder_hidden_states=self._image(features),
        )
        return out.last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # Tied decoder (BERT's): the output matrix is the input word-embedding matrix.
        return F.linear(self.lm_transform(hidden), self.embeddings.word_embeddings.weight, self.lm_bias)

    def tokenize(
        self, texts: Sequence[str], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → ([CLS] … [SEP] ids, attention mask), padded to the longest, cut at max_text_len."""
        enc = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def itg_attention_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """BLIP-2's multimodal causal mask: [B, 1, Q+T, Q+T], True where row may attend to column.

    Queries attend to all queries and never to text; text position t attends to every query and to
    text positions ≤ t that are not padding.
    """
    b, t = text_mask.shape
    n = num_queries + t
    allowed = torch.zeros(b, n, n, dtype=torch.bool, device=text_mask.device)
    allowed[:, :, :num_queries] = True
    causal = torch.ones(t, t, dtype=torch.bool, device=text_mask.device).tril()
    allowed[:, num_queries:, num_queries:] = causal & text_mask.bool()[:, None, :]
    return allowed[:, None]


# ---------------------------------------------------------------------- loading BERT weights
@dataclass
class BertLoadReport:
    """What :func:`load_bert_weights` did: target ← source pairs, new tensors, BERT tensors left out."""

    loaded: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors from the text model, {len(self.new)} new "
            f"({', '.join(_groups(self.new))}), unused: {', '.join(self.unused) or 'none'}"
        )


def _groups(names: Sequence[str]) -> list[str]:
    """Collapse per-layer names for a readable log line (cross-attention of layers 0, 2 → one entry)."""
    seen: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        if len(parts) > 3 and parts[:2] == ["qformer", "encoder"] and parts[3].isdigit():
            parts[3] = "*"
        seen[".".join(parts[:6]) if parts[0] == "qformer" else parts[0]] = None
    return list(seen)


def _bert_mapping(num_layers: int) -> dict[str, list[str]]:
    """BertModel name → Q-Former name(s). The query FFN starts as a copy of the text FFN (BLIP-2)."""
    m = {
        "embeddings.word_embeddings.weight": ["embeddings.word_embeddings.weight"],
        "embeddings.LayerNorm.weight": ["qformer.layernorm.weight"],
        "embeddings.LayerNorm.bias": ["qformer.layernorm.bias"],
    }
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}", f"qformer.encoder.layer.{i}"
        for w in ("weight", "bias"):
            for proj in ("query", "key", "value"):
                m[f"{src}.attention.self.{proj}.{w}"] = [f"{dst}.attention.attention.{proj}.{w}"]
            for sub in ("dense", "LayerNorm"):
                m[f"{src}.attention.output.{sub}.{w}"] = [f"{dst}.attention.output.{sub}.{w}"]
                m[f"{src}.output.{sub}.{w}"] = [f"{dst}.output.{sub}.{w}", f"{dst}.output_query.{sub}.{w}"]
            m[f"{src}.intermediate.dense.{w}"] = [
                f"{dst}.intermediate.dense.{w}",
                f"{dst}.intermediate_query.dense.{w}",
            ]
    return m


def load_bert_weights(connector: QFormerConnector, bert_state: Mapping[str, torch.Tensor]) -> BertLoadReport:
    """Copy a BertModel state dict into the connector. Strict: a BERT tensor that is neither mapped nor
    known to be unused is an error, and so is a shape mismatch.

    BLIP-2's text embeddings have no token-type table; BERT adds token type 0 to every token, so that
    row is folded into the position embeddings, which keeps a text-only pass equal to BERT's output.
    """
    own = dict(connector.named_parameters())
    mapping = _bert_mapping(connector.qformer.config.num_hidden_layers)
    report = BertLoadReport()
    unexpected = []
    values: dict[str, torch.Tensor] = {}
    for name, tensor in bert_state.items():
        if name in mapping:
            for target in mapping[name]:
                values[target] = tensor
                report.loaded[target] = name
        elif name == "embeddings.position_embeddings.weight":
            token_type = bert_state.get("embeddings.token_type_embeddings.weight")
            values["embeddings.position_embeddings.weight"] = (
                tensor if token_type is None else tensor + token_type[0]
            )
            report.loaded["embeddings.position_embeddings.weight"] = name + " + token_type_embeddings[0]"
        elif name == "embeddings.token_type_embeddings.weight" or name in _UNUSED_BERT:
            report.unused.append(name)
        elif name.endswith("position_ids") or name.endswith("token_type_ids"):
            continue  # index buffers, not weights
        else:
            unexpected.append(name)
    if unexpected:
        raise OmnifuseError(
            f"the text model has {len(unexpected)} tensors the Q-Former cannot place (e.g. {unexpected[0]}); "
            "qformer.text_model must be a plain BERT encoder (BertModel), such as all-minilm-l6-v2"
        )
    absent = [n for n in (*mapping, "embeddings.position_embeddings.weight") if n not in bert_state]
    if absent:
        raise OmnifuseError(
            f"the text model lacks {len(absent)} BERT tensors the Q-Former needs (e.g. {absent[0]}); "
            "it is not a complete BertModel checkpoint"
        )
    with torch.no_grad():
        for target, tensor in values.items():
            if own[target].shape != tensor.shape:
                raise OmnifuseError(
                    f"text model tensor {report.loaded[target]} has shape {tuple(tensor.shape)}, the Q-Former's "
                    f"{target} expects {tuple(own[target].shape)}"
                )
            own[target].copy_(tensor)
    report.new = [n for n in own if n not in report.loaded]
    return report


def build_qformer(
    text_model: str,
    in_dim: int,
    out_dim: int,
    init: str = "pretrained",
    num_queries: int = 32,
    cross_attention_every: int = 2,
    embed_dim: int = 256,
    max_text_len: int = 32,
    projector: str = "linear",
    hidden: int | None = None,
) -> QFormerConnector:
    """A Q-Former shaped like ``text_model`` (packaged name, HF id or folder with a BERT), initialised
    from its weights (``init="pretrained"``) or randomly (``"random"``; its tokenizer is still used)."""
    path, config, tokenizer = load_text_model(text_model, "Q-Former")
    connector = QFormerConnector.from_bert_config(
        config,
        tokenizer,
        in_dim,
        out_dim,
        num_queries=num_queries,
        cross_attention_every=cross_attention_every,
        embed_dim=embed_dim,
        max_text_len=max_text_len,
        projector=projector,
        hidden=hidden,
    )
    if init == "pretrained":
        bert = load_bert(path, text_model, "Q-Former")
        report = load_bert_weights(connector, bert.state_dict())
        log.info("Q-Former from %s: %s", text_model, report.summary())
    return connector
