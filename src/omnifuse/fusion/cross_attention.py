"""Intermediate fusion (Flamingo, Alayrac et al. 2022): tanh-gated cross-attention blocks interleaved
with the decoder layers of a frozen Hugging Face causal LM.

How it is wired, without touching the LLM's classes:

* :func:`decoder_layers` finds the decoder's layer list generically: the one ``nn.ModuleList`` inside
  the LLM whose length equals ``config.num_hidden_layers`` (no per-architecture table).
* :class:`CrossAttentionFusion` replaces every ``every_n``-th entry of that list (layers ``every_n − 1``,
  ``2·every_n − 1``, … as in OpenFlamingo) with a :class:`GatedDecoderLayer`: a wrapper that runs its
  gated block on the hidden states and then the original layer, with the original arguments. The blocks'
  parameters belong to the fusion module (component ``fusion``); the wrappers only refer to them, so
  ``llm`` keeps exactly the pretrained parameters (LoRA on ``llm`` never touches a block).
* Media reach the blocks through a small :class:`MediaContext` owned by the fusion module: the model binds
  the media of the current batch with ``fusion.bind(features, mask)`` for the duration of a forward pass
  (or of a whole generation loop, so that every cached decoding step sees them) and unbinds them after.
  While nothing is bound (a direct call of ``model.llm``) the wrappers run the original layers only.

Masking: each text token attends to all media tokens of its own sample (``mask`` is ``[B, M]``, True
where a media token is real; rows are padded to the longest sample). This is Flamingo's rule for one
image per sample; with several images per sample every token sees all of them (Flamingo would restrict
a token to the image just before it). Rows without any media get a zero attention output. The text holds
no placeholder or marker token for the media (the processor inserts nothing), so the token sequence is
exactly the text-only one. Packed rows (several samples in one row, ``runtime.packing``) bind a per-token
mask instead (:func:`packed_media`): a token sees its own sample's media only. Both gates start at 0
(tanh(0) = 0), so a fresh model computes exactly what the pretrained LLM computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from omnifuse.errors import OmnifuseError


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(α_attn)·CrossAttn(LN(x), media) then + tanh(α_ffn)·FFN(LN(x)); α's start at 0."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 4) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim)
        )
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, x: torch.Tensor, media: torch.Tensor, mask: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if token_mask is not None:
            return self._per_token(x, media, token_mask)
        has_media = mask.any(dim=1)
        if bool(has_media.any()):
            # A row with no media would attend to nothing (softmax over no keys = NaN); let it attend to
            # its padding instead and zero the result.
            ignore = ~mask & has_media[:, None]
            media = media.to(x.dtype)
            attended = self.attn(
                self.attn_norm(x), media, media, key_padding_mask=ignore, need_weights=False
            )[0]
            x = x + self.attn_gate.tanh().to(x.dtype) * (attended * has_media[:, None, None].to(x.dtype))
        # The feed-forward part runs on every token, with or without media (as in Flamingo).
        return x + self.ffn_gate.tanh().to(x.dtype) * self.ffn(x)

    def _per_token(self, x: torch.Tensor, media: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """The same block where each text token has its own media (``token_mask`` ``[B, L, M]``, packed
        rows): a token attends to its own sample's media only, a token without any gets zero."""
        has_media = token_mask.any(dim=-1)  # [B, L]
        if bool(has_media.any()):
            # A token without media would attend to nothing (NaN): let it see all keys, then zero it.
            blocked = ~token_mask & has_media[..., None]
            blocked = blocked.repeat_interleave(self.attn.num_heads, dim=0)  # [B·heads, L, M]
            media = media.to(x.dtype)
            attended = self.attn(self.attn_norm(x), media, media, attn_mask=blocked, need_weights=False)[0]
            x = x + self.attn_gate.tanh().to(x.dtype) * (attended * has_media[..., None].to(x.dtype))
        return x + self.ffn_gate.tanh().to(x.dtype) * self.ffn(x)


@dataclass
class BoundMedia:
    features: torch.Tensor  # [B, M, D_llm]: each sample's media tokens, padded
    mask: torch.Tensor  # [B, M] bool: True where a media token is real
    # Packed rows only: [B, L, M] bool, True where text token l may attend to media token m (its sample's).
    token_mask: torch.Tensor | None = None


class MediaContext:
    """The media of the current batch, shared by the fusion module and its layer wrappers."""

    def __init__(self) -> None:
        self.media: BoundMedia | None = None


class GatedDecoderLayer(nn.Module):
    """A decoder layer with a gated cross-attention block run on its input hidden states.

    The block is referenced, not registered (its parameters live in the fusion module), and unknown
    attributes are looked up on the wrapped layer, so code that inspects the layer still works."""

    def __init__(self, layer: nn.Module, block: GatedCrossAttentionBlock, context: MediaContext) -> None:
        super().__init__()
        self.layer = layer
        self._block = (block,)  # a tuple hides it from nn.Module registration
        self._context = context

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "layer":
                raise
            return getattr(self.layer, name)

    def forward(self, *args, **kwargs):
        media = self._context.media
        if media is not None:
            block, bound = self._block[0], (media.features, media.mask, media.token_mask)
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = block(kwargs["hidden_states"], *bound)
            else:
                args = (block(args[0], *bound), *args[1:])
        return self.layer(*args, **kwargs)


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder's layer list: the single ``nn.ModuleList`` whose length is ``config.num_hidden_layers``."""
    n = getattr(getattr(llm, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise OmnifuseError(
            f"cross-attention fusion: {type(llm).__name__} has no config.num_hidden_layers, so its decoder "
            "layers cannot be found; use a Hugging Face decoder-only causal LM (Llama, Qwen2, SmolLM, …)"
        )
    found = [(name, m) for name, m in llm.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        where = ", ".join(name for name, _ in found) or "none"
        raise OmnifuseError(
            f"cross-attention fusion: expected exactly one list of {n} decoder layers in {type(llm).__name__}, "
            f"found {len(found)} ({where}); this LLM's layout is not supported, use early fusion instead"
        )
    return found[0][1]


class CrossAttentionFusion(nn.Module):
    """Owns the gated blocks (parameters ``blocks.<k>.*``) and the media context; see the module doc."""

    def __init__(self, llm: nn.Module, dim: int, every_n: int = 1, heads: int = 8, ffn_mult: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise OmnifuseError(
                f"cross-attention fusion: the LLM width {dim} is not divisible by heads={heads}; "
                f"set model.fusion.heads to a divisor of {dim}"
            )
        layers = decoder_layers(llm)
        if any(isinstance(layer, GatedDecoderLayer) for layer in layers):
            raise OmnifuseError(
                "cross-attention fusion: this LLM already carries gated cross-attention blocks; "
                "build each model from a freshly loaded LLM"
            )
        positions = [i for i in range(len(layers)) if (i + 1) % every_n == 0]
        if not positions:
            raise OmnifuseError(
                f"cross-attention fusion: every_n={every_n} is larger than the LLM's {len(layers)} layers, "
                "so no block would be inserted; choose every_n ≤ the number of layers"
            )
        self.context = MediaContext()
        self.layer_indices = positions
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(dim, heads, ffn_mult) for _ in positions)
        for block, i in zip(self.blocks, positions, strict=True):
            layers[i] = GatedDecoderLayer(layers[i], block, self.context)

    @contextmanager
    def bind(
        self, features: torch.Tensor, mask: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Make the batch's media visible to the blocks inside the ``with``. A batch without media binds
        ``[B, 0, D]`` features: the blocks still run (their feed-forward part applies to text too), so a
        sample's output never depends on whether other samples of its batch have media."""
        if self.context.media is not None:
            raise RuntimeError("media are already bound: cross-attention forward passes cannot be nested")
        self.context.media = BoundMedia(features, mask, token_mask)
        try:
            yield
        finally:
            self.context.media = None


def packed_media(
    features: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor, rows: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample media (``[N, M, D]`` features, ``[N, M]`` mask; samples in packed order) as packed rows
    need them: each row's samples' media tokens end to end (``[R, M', D]``, ``[R, M']``) and the per-token
    mask ``[R, L, M']`` that lets a text token (``segments`` ``[R, L]``: its sample, -1 for padding) see
    only the media of its own sample."""
    num_rows = segments.shape[0]
    feats: list[list[torch.Tensor]] = [[] for _ in range(num_rows)]
    owners: list[list[torch.Tensor]] = [[] for _ in range(num_rows)]
    for s, r in enumerate(rows):
        real = features[s][mask[s]]
        feats[r].append(real)
        owners[r].append(torch.full((real.shape[0],), s, dtype=torch.long, device=segments.device))
    empty = features.new_zeros(0, features.shape[-1])
    none = torch.zeros(0, dtype=torch.long, device=segments.device)
    row_feats = pad_sequence([torch.cat(f) if f else empty for f in feats], batch_first=True)
    owner = pad_sequence([torch.cat(o) if o else none for o in owners], batch_first=True, padding_value=-1)
    token_mask = (segments[:, :, None] == owner[:, None, :]) & (segments >= 0)[:, :, None]
    return row_feats, owner >= 0, token_mask
