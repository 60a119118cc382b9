"""Qwen-VL's grounding tags as tokens of their own (recipe ``model.llm.grounding_tokens: true``).

``<ref>``, ``</ref>``, ``<box>`` and ``</box>`` are added to the tokenizer (each one token instead of the
3–4 pieces a BPE vocabulary splits them into), and the LLM gets one new embedding row per tag. The rows
live in a small parameter of their own, :data:`ROWS` (``added_token_rows``), beside the frozen base
matrix, instead of a resized copy of the whole matrix: a stage trains them whenever it trains the LLM
(``llm: lora`` or ``full``, :func:`omnifuse.models.stages.select_parameters`), and the run stores just
these rows with its other changed parameters, so a reload rebuilds the same tokens (added in the same
order to the same base tokenizer) and loads the trained rows. The output layer scores the new tokens with
the same rows (tied, as SmolLM2 ties its embeddings). :func:`bake_added_tokens` folds them into a resized
plain embedding and head for exports.

The tags are added as ordinary (not "special") added tokens, so decoding with ``skip_special_tokens``
keeps them in the text, where :mod:`omnifuse.data.boxes` parses them.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken
from torch import nn

TAGS = ("<ref>", "</ref>", "<box>", "</box>")
ROWS = "added_token_rows"  # the parameter's name (the stage selection and the run files key on it)


def is_added_rows(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == ROWS


class AddedTokenEmbedding(nn.Module):
    """The base embedding plus trainable rows for the token ids ``ids`` (past or inside the base rows)."""

    def __init__(self, base: nn.Embedding, ids: list[int]) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        w = base.weight.detach().float()
        # Deterministic start (the same rows on every build, before the run's weights load): the mean
        # embedding plus a small fixed-seed perturbation, so the new tokens are told apart from the start.
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(len(ids), w.shape[1], generator=g) * w.std(dim=0, keepdim=True).cpu() * 0.1
        rows = w.mean(dim=0, keepdim=True).cpu() + noise
        setattr(self, ROWS, nn.Parameter(rows.to(base.weight.dtype).to(base.weight.device)))
        self.num_embeddings = max(base.num_embeddings, max(ids) + 1)
        self.embedding_dim = base.embedding_dim

    @property
    def rows(self) -> nn.Parameter:
        return getattr(self, ROWS)

    @property
    def weight(self) -> torch.Tensor:  # what code reading an embedding's weight (dtype, device) sees
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        inside = input_ids < self.base.num_embeddings
        out = self.base(torch.where(inside, input_ids, torch.zeros_like(input_ids)))
        rows = self.rows.to(out.dtype)
        for k in range(self.ids.shape[0]):
            out = torch.where((input_ids == self.ids[k]).unsqueeze(-1), rows[k], out)
        return out


class AddedTokenHead(nn.Module):
    """The base output layer with logits for the added ids from the embedding's rows (tied)."""

    def __init__(self, base: nn.Module, embedding: AddedTokenEmbedding) -> None:
        super().__init__()
        self.base = base
        object.__setattr__(self, "_embedding", embedding)  # not a child: its rows are the embedding's

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)
        emb = self._embedding
        extra = hidden @ emb.rows.to(hidden.dtype).T
        if logits.shape[-1] < emb.num_embeddings:
            pad = logits.new_zeros(*logits.shape[:-1], emb.num_embeddings - logits.shape[-1])
            logits = torch.cat([logits, pad], dim=-1)
        return logits.index_copy(-1, emb.ids, extra.to(logits.dtype))


def add_grounding_tokens(llm, tokenizer) -> list[int]:
    """Add the tags to ``tokenizer`` (in place; tags it already has are kept) and wrap ``llm``'s input
    embedding and output layer with a row per tag. Returns the tags' token ids."""
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    ids = [tokenizer.convert_tokens_to_ids(t) for t in TAGS]
    embedding = AddedTokenEmbedding(llm.get_input_embeddings(), ids)
    head = llm.get_output_embeddings()
    llm.set_input_embeddings(embedding)
    if head is not None:
        llm.set_output_embeddings(AddedTokenHead(head, embedding))
    llm.config.vocab_size = embedding.num_embeddings
    return ids


@torch.no_grad()
def bake_added_tokens(llm) -> bool:
    """Replace the wrappers by a plain embedding and head with the rows written in (for exports that
    save the LLM as a transformers model). Returns whether there was anything to bake."""
    embedding = llm.get_input_embeddings()
    if not isinstance(embedding, AddedTokenEmbedding):
        return False
    head = llm.get_output_embeddings()
    llm.set_input_embeddings(embedding.base)
    if isinstance(head, AddedTokenHead):
        llm.set_output_embeddings(head.base)
    tied = getattr(llm.config, "tie_word_embeddings", False)
    llm.resize_token_embeddings(embedding.num_embeddings, mean_resizing=False)
    llm.get_input_embeddings().weight[embedding.ids] = embedding.rows.to(embedding.base.weight.dtype)
    out = llm.get_output_embeddings()
    if out is not None and not tied:
        out.weight[embedding.ids] = embedding.rows.to(out.weight.dtype)
    return True
