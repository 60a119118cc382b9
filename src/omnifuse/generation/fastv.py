"""Visual-token pruning at inference, FastV-style (Chen et al. 2024, "An Image is Worth 1/2 Tokens After
Layer 2"): the prompt goes through the first ``layer`` decoder layers whole; there, each media token is
ranked by the attention the last prompt token gives it (averaged over heads, as FastV's code does), and
only the most attended ``keep`` share of each row's media tokens goes on through the other layers.

How it runs on any Hugging Face decoder without an eager-attention model:

* The prefill is two calls of the LLM's own forward, each over a slice of its decoder layers (the layer
  list is narrowed for the duration of the call, :func:`_only_layers`): layers ``[0, K)`` on the whole
  prompt, then layers ``[K, N)`` on the kept columns, fed the hidden states layer K−1 returned. Each call
  builds its own attention mask from a 2-D mask, so left padding and the new left fill of rows that kept
  fewer columns are masked by transformers itself, whatever the attention implementation (sdpa, eager,
  flash). Kept tokens keep their original position ids (RoPE sees the same positions).
* The attention of layer K−1 is computed for the last query only, from that layer's own keys (read from
  the KV cache: exactly what it attended to) and a query rebuilt from its ``q_proj`` (with ``q_norm`` where
  the layer has one) and rotary embedding. That rebuild assumes the Llama query/key transform (Llama,
  Mistral, Qwen2/3, SmolLM); it is checked against the cached key of the same token, and refused when
  they differ. sdpa returns no attention weights, and switching the whole model to eager would be slower.
* The KV cache is then pruned to the kept columns in *every* layer (the first K layers' entries are
  gathered too), so decoding is the engine's ordinary cached loop over a shorter cache. This differs from
  FastV's paper in one respect: new tokens in the first K layers no longer see the dropped tokens.

Nothing here is in transformers or a kept library (FastV's own code patches LLaVA's Llama); it is
written here, above the LLM, without changing its classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.fusion import decoder_layers


@dataclass(frozen=True)
class TokenPruning:
    """``layer``: how many decoder layers see every token (FastV's K, ≥ 1); ``keep``: the share of each
    row's media tokens kept after them (FastV's 1 − R), in (0, 1]."""

    layer: int = 2
    keep: float = 0.5

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(
                f"token pruning layer must be ≥ 1 (layers that see every token), not {self.layer}"
            )
        if not (math.isfinite(self.keep) and 0 < self.keep <= 1):
            raise ValueError(f"token pruning keep ratio must be in (0, 1], not {self.keep}")


@dataclass
class PrunedPrefill:
    """The prefill's output as the engine reads it, with the shorter mask and positions decoding goes on from."""

    logits: torch.Tensor
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor

    @property
    def past_key_values(self) -> Any:
        return self.cache


def check_prunable(llm: nn.Module, pruning: TokenPruning, early_fusion: bool) -> None:
    """Refuse, before anything runs, a model token pruning cannot apply to."""
    if not early_fusion:
        raise OmnifuseError(
            "token pruning (FastV) drops media tokens from the text, but this model uses cross-attention "
            "fusion: its media never enter the text. Remove generation.fastv / --fastv-keep, or use a "
            "recipe with fusion: {type: early}"
        )
    n = len(_layers(llm))
    if pruning.layer >= n:
        raise OmnifuseError(
            f"token pruning after layer {pruning.layer}: the LLM has {n} decoder layers, so the last layers "
            f"would see nothing pruned; give a layer from 1 to {n - 1} (FastV uses 2)"
        )


def _layers(llm: nn.Module) -> nn.ModuleList:
    try:
        return decoder_layers(llm)
    except OmnifuseError as exc:
        raise OmnifuseError(f"token pruning (FastV) needs the LLM's decoder layers: {exc}") from None


@contextmanager
def _only_layers(llm: nn.Module, keep: slice) -> Iterator[None]:
    """The LLM's decoder runs only ``layers[keep]`` inside the ``with`` (the same modules, the list is
    put back after): transformers' own forward then covers masks, rotary embeddings and the head."""
    layers = _layers(llm)
    name = next(n for n, m in llm.named_modules() if m is layers)
    parent_name, _, attr = name.rpartition(".")
    parent = llm.get_submodule(parent_name) if parent_name else llm
    setattr(parent, attr, nn.ModuleList(list(layers)[keep]))
    try:
        yield
    finally:
        setattr(parent, attr, layers)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)  # transformers ≥ 5.2x; older versions say past_key_values
    return cache if cache is not None else out.past_key_values


def _attention_module(layer: nn.Module) -> nn.Module:
    for module in layer.modules():
        # nn.Linear, or a wrapper of one that computes the same projection (PEFT's LoRA layers)
        if isinstance(getattr(module, "q_proj", None), nn.Module) and isinstance(
            getattr(module, "k_proj", None), nn.Module
        ):
            return module
    raise OmnifuseError(
        f"token pruning (FastV): decoder layer {type(layer).__name__} has no attention with q_proj / k_proj "
        "projections, so its attention cannot be ranked; turn token pruning off for this LLM"
    )


def _rotated(
    proj: nn.Module, norm: nn.Module | None, x: torch.Tensor, cos, sin, head_dim: int
) -> torch.Tensor:
    """``[B, heads, 1, head_dim]``: the projection of ``x`` ``[B, 1, D]`` per head, normed where the layer
    norms its queries / keys, rotated by RoPE (the rotate-half form of transformers' Llama)."""
    from transformers.models.llama.modeling_llama import rotate_half

    h = proj(x).view(x.shape[0], 1, -1, head_dim).transpose(1, 2)
    if norm is not None:
        h = norm(h)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return h * cos + rotate_half(h) * sin


def last_token_attention(attn: nn.Module, x_last, cos, sin, keys: torch.Tensor, mask: torch.Tensor):
    """``[B, L]``: the attention the last prompt token pays every column in this layer, averaged over
    heads; ``x_last`` is the layer's normed input at the last column, ``keys`` the layer's cached keys."""
    head_dim = keys.shape[-1]
    k_last = _rotated(attn.k_proj, getattr(attn, "k_norm", None), x_last, cos, sin, head_dim)
    if not torch.allclose(k_last.float(), keys[:, :, -1:].float(), rtol=1e-2, atol=1e-3):
        raise OmnifuseError(
            "token pruning (FastV): this LLM's attention does not compute its keys as Llama does (projection, "
            "optional q/k norm, rotary), so its attention weights cannot be rebuilt; turn token pruning off"
        )
    q = _rotated(attn.q_proj, getattr(attn, "q_norm", None), x_last, cos, sin, head_dim)
    groups = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(groups, dim=1) if groups > 1 else keys
    scale = getattr(attn, "scaling", head_dim**-0.5)
    scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * scale  # [B, H, L]
    scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


def kept_columns(
    scores: torch.Tensor, mask: torch.Tensor, media: torch.Tensor, keep: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, its real text columns and the ``ceil(keep × n)`` most attended of its ``n`` media columns,
    in their original order, left-filled to the longest row: ``(index [B, L'], mask [B, L'])``; the fill
    (index 0) is masked out."""
    rows = []
    for b in range(scores.shape[0]):
        real = mask[b].bool()
        is_media = media[b] & real
        n = int(is_media.sum())
        cols = real & ~is_media
        if n:
            ranked = scores[b].masked_fill(~is_media, float("-inf"))
            top = ranked.topk(math.ceil(keep * n)).indices
            cols = cols.index_fill(0, top, True)
        rows.append(cols.nonzero().squeeze(-1))
    width = max(len(r) for r in rows)
    index = torch.zeros(len(rows), width, dtype=torch.long, device=scores.device)
    new_mask = torch.zeros(len(rows), width, dtype=mask.dtype, device=mask.device)
    for b, r in enumerate(rows):
        index[b, width - len(r) :] = r
        new_mask[b, width - len(r) :] = 1
    return index, new_mask


def _columns(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A cache tensor ``[B, heads, L, d]`` with only the columns ``index`` ``[B, L']`` of each row."""
    return t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1]))


@torch.no_grad()
def pruned_prefill(
    llm: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    media: torch.Tensor,
    pruning: TokenPruning,
    forward=None,
) -> PrunedPrefill:
    """Prefill ``embeds`` (left-padded, ``mask`` / ``positions`` as the engine makes them) with the media
    columns (``media`` ``[B, L]`` bool) pruned after layer ``pruning.layer``. ``forward`` runs the LLM
    (the engine's, under its autocast); default ``llm(...)``."""
    forward = forward or llm
    k = pruning.layer
    layers = _layers(llm)
    attn = _attention_module(layers[k - 1])
    seen: dict[str, Any] = {}

    def take_input(_module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen["x_last"] = hidden[:, -1:]
        seen["rotary"] = kwargs["position_embeddings"]

    def take_output(_module, _args, output):
        seen["hidden"] = output[0] if isinstance(output, tuple) else output

    hooks = [
        attn.register_forward_pre_hook(take_input, with_kwargs=True),
        layers[k - 1].register_forward_hook(take_output),
    ]
    try:
        with _only_layers(llm, slice(0, k)):
            first = forward(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
    finally:
        for h in hooks:
            h.remove()
    early = _cache_of(first)
    cos, sin = (t[:, -1:] for t in seen["rotary"])
    scores = last_token_attention(attn, seen["x_last"], cos, sin, early.layers[k - 1].keys, mask)
    index, new_mask = kept_columns(scores, mask, media, pruning.keep)
    hidden = seen["hidden"].gather(1, index[..., None].expand(-1, -1, seen["hidden"].shape[-1]))
    new_positions = positions.gather(1, index)
    with _only_layers(llm, slice(k, None)):
        rest = forward(
            inputs_embeds=hidden, attention_mask=new_mask, position_ids=new_positions, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
    cache = _cache_of(rest)
    # The first K layers' entries, pruned to the same columns: every layer's cache has the same length.
    for i in range(k):
        layer = early.layers[i]
        keys, values = (_columns(t, index) for t in (layer.keys, layer.values))
        cache.update(keys, values, i)
    return PrunedPrefill(rest.logits, cache, new_mask, new_positions)
