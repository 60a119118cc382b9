"""Generation engine: batched greedy or sampled decoding with a KV cache.

It knows nothing of files or HTTP: it takes prompt samples (messages ending before the answer), or
prompts the processor has already encoded, and returns tokens or text. The CLI, the evaluator and the
server use it. Prompts are left-padded so that every row ends at the same column; positions come from
the attention mask so padding does not shift them.

Every row of a batch carries its own generation settings (the server batches requests that asked for
different lengths and temperatures), and ``stream`` yields the new tokens step by step so that a
caller can forward them as they come and cancel rows it no longer needs. With ``prefill_chunk`` the
prompt goes through the KV cache in chunks of that many columns, with a (token-less) yield after each
chunk: a caller that interleaves several streams gets control back within one chunk's work, however
long the prompt. A row whose own token selection fails finishes with reason "error"; the others go on.

Two fast paths keep the tokens of the plain one: on a float32 CPU model the linear layers run on
oneDNN-packed weights (``packed.py``; ``Engine(..., pack_weights=False)`` or a recipe's
``generation.packed_weights: off`` turns it off), and the prompt
prefix every row shares (chat template header, system prompt) is prefilled once (``prefix.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from omnifuse.data.sample import Sample
from omnifuse.fusion import placeholder_mask
from omnifuse.generation.fastv import TokenPruning, check_prunable, pruned_prefill
from omnifuse.generation.packed import packed_linears, packing_supported
from omnifuse.generation.prefix import prefill_plan, prefix_first
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Encoded, Processor
from omnifuse.runtime import placement_of

if TYPE_CHECKING:
    from omnifuse.recipe import Recipe

# Below this temperature a row decodes greedily, as vLLM does: dividing the logits by 1e-300 would
# overflow to inf and the softmax to NaN.
SAMPLING_EPS = 1e-5
# A row's generator takes a 64-bit seed; the signed int64 range (what OpenAI's API and vLLM document)
# maps one-to-one onto it, while torch would alias -1 and 2**64 - 1 and overflow beyond.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # seeds this row's own generator: its tokens do not depend on the batch

    def __post_init__(self) -> None:
        # Checked here so that no invalid setting ever reaches a batch it could fail.
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be ≥ 0, not {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number ≥ 0, not {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(
                f"seed must be a 64-bit signed integer ({SEED_MIN} to {SEED_MAX}), not {self.seed}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


def generation_config(
    recipe: Recipe, max_new_tokens: int | None = None, greedy: bool = False
) -> GenerationConfig:
    """The one way a recipe's ``generation`` section (and its seed) becomes a GenerationConfig.
    ``max_new_tokens`` overrides the recipe's; ``greedy`` keeps only the length (no sampling, no seed),
    as a timing measurement wants."""
    g = recipe.generation
    n = max_new_tokens or g.max_new_tokens
    if greedy:
        return GenerationConfig(n)
    return GenerationConfig(n, g.temperature, g.top_p, seed=recipe.seed)


def token_pruning(recipe: Recipe) -> TokenPruning | None:
    """The recipe's ``generation.fastv`` as the engine takes it (None: off)."""
    f = recipe.generation.fastv
    return None if f is None else TokenPruning(f.layer, f.keep)


def pack_weights(recipe: Recipe) -> bool:
    """The recipe's ``generation.packed_weights`` as the engine takes it (False: never packed)."""
    return recipe.generation.packed_weights != "off"


def _sample_row(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    # Sampled on the CPU, with the row's CPU generator, whatever the model's device: a seed gives the
    # same tokens on every device (a CUDA generator draws another stream).
    probs = torch.softmax(logits.float().cpu() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
        keep[0] = True  # the most likely token always stays (a top_p below float32's least is 0 there)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class StepTokens:
    """The tokens one decoding step produced: (row, token) for rows still generating, and the rows
    that finished at this step with why ("stop": an end-of-turn token, "length": max_new_tokens,
    "cancelled", or "error": then ``errors`` holds the exception). A step with neither is a pause
    between prefill chunks."""

    tokens: list[tuple[int, int]]
    finished: dict[int, str]
    errors: dict[int, Exception] = field(default_factory=dict)


class Engine:
    """``pruning``: drop the least attended media tokens after a decoder layer at prefill (FastV,
    :mod:`omnifuse.generation.fastv`); decoding then runs over the shorter KV cache. ``pack_weights``:
    run a float32 CPU model's linear layers on oneDNN-packed copies of their weights where they fit
    (:mod:`omnifuse.generation.packed`); False: never make the copies."""

    def __init__(
        self,
        model: MultimodalLM,
        processor: Processor,
        pruning: TokenPruning | None = None,
        pack_weights: bool = True,
    ) -> None:
        if pruning is not None:
            check_prunable(model.llm, pruning, early_fusion=model.fusion is None)
        self.model = model
        self.processor = processor
        self.pruning = pruning
        self._max_token_chars: int | None = None
        # oneDNN-packed copies of the LLM's linear weights (float32 CPU models): faster decoding steps for
        # as much memory again as those weights. False keeps the memory instead.
        self.pack_weights = pack_weights

    @property
    def context_length(self) -> int | None:
        """The LLM's maximum sequence length (prompt + answer), if its config states one."""
        return getattr(self.model.llm.config, "max_position_embeddings", None)

    @property
    def max_token_chars(self) -> int:
        """The most characters one token of the vocabulary stands for: a text of more than
        ``context_length × max_token_chars`` characters cannot fit, whatever the tokenizer makes of it.
        (A byte-level token's string has one character per byte, at least as many as it decodes to.)"""
        if self._max_token_chars is None:
            vocab = self.processor.tokenizer.get_vocab()
            self._max_token_chars = max(8, max((len(t) for t in vocab), default=0))
        return self._max_token_chars

    @torch.no_grad()
    def stream(
        self,
        encoded: Sequence[Encoded],
        cfgs: Sequence[GenerationConfig],
        use_cache: bool = True,
        cancelled: Callable[[int], bool] | None = None,
        prefill_chunk: int | None = None,
    ) -> Iterator[StepTokens]:
        """Decode encoded prompts step by step, one config per row; rows for which ``cancelled(row)``
        turns true stop being generated (their finish reason is "cancelled"). ``prefill_chunk``: at most
        this many prompt columns per forward pass (with the cache only), with a pause after each."""
        if len(cfgs) != len(encoded):
            raise ValueError(f"{len(encoded)} prompts but {len(cfgs)} generation configs")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, not {prefill_chunk}")
        if self.pruning is not None and not use_cache:
            raise ValueError("token pruning shortens the KV cache: it needs use_cache=True")
        batch = self.processor.collate(list(encoded), padding_side="left")
        model = self.model
        placement = placement_of(model)  # once per call: every forward pass runs under its autocast
        weights = self._weights(placement)
        with (
            placement.autocast(),
            model.fuse(
                batch.input_ids,
                batch.media,
                batch.media_counts,
                batch.sample_ids,
                batch.media_lengths,
                batch.media_keys,
            ) as embeds,
        ):
            # Cross-attention fusion reads the media in every forward pass. They are bound again around
            # each pass, not for the whole loop: a caller may interleave several streams, each with its
            # own media, and a stream suspended at a yield must not leave its media bound.
            bound = model.fusion.context.media if model.fusion is not None else None

        def forward(**kwargs):
            # Entered around each pass, not across the generator's yields: autocast is thread state the
            # caller's code between two steps must not run under.
            with placement.autocast(), weights():
                if bound is None:
                    return model.llm(**kwargs)
                with model.fusion.bind(bound.features, bound.mask):
                    return model.llm(**kwargs)

        yield from self._decode(batch, embeds, forward, cfgs, use_cache, cancelled, prefill_chunk)

    def _weights(self, placement) -> Callable[[], contextlib.AbstractContextManager]:
        """The context each forward pass runs the LLM's linear layers under: oneDNN-packed weights on a
        float32 CPU model (:mod:`omnifuse.generation.packed`), packed again where they changed; else none."""
        if not self.pack_weights or placement.mixed or not packing_supported(self.model.llm):
            return contextlib.nullcontext
        return packed_linears(self.model.llm).active

    def _media_columns(self, batch) -> torch.Tensor | None:
        """``[B, L]`` True at media placeholder columns, or None when the batch has none to prune."""
        media = placeholder_mask(batch.input_ids, list(self.model.placeholder_ids.values()))
        return media if bool(media.any()) else None

    def _prefill(self, forward, embeds, mask, positions, chunk: int | None):
        """Run the prompt through the LLM and the cache, ``chunk`` columns at a time; yields a pause
        after every chunk but the last and returns the last chunk's output. Each chunk sees the mask
        of every column up to its end, so left padding is masked exactly as in one pass."""
        n, width = mask.shape
        step = chunk or width
        # Leading columns every row shares (:mod:`omnifuse.generation.prefix`) run for one row, and their
        # keys and values are copied to the others. Not with cross-attention: the media reach every token.
        shared = prefill_plan(embeds, mask) if self.model.fusion is None else 0
        past = None
        for start in range(0, width, step):
            end = min(start + step, width)
            for a, b, rows in (
                (start, min(end, shared), slice(0, 1)),
                (max(start, shared), end, slice(None)),
            ):
                if a >= b:
                    continue
                res = forward(
                    inputs_embeds=embeds[rows, a:b],
                    attention_mask=mask[rows, :b],
                    position_ids=positions[rows, a:b],
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
                past = res.past_key_values
                if b == shared:
                    past.batch_repeat_interleave(n)
            if end < width:
                yield StepTokens([], {})
        return res

    def _decode(
        self,
        batch,
        embeds: torch.Tensor,
        forward,
        cfgs: Sequence[GenerationConfig],
        use_cache: bool,
        cancelled: Callable[[int], bool] | None,
        prefill_chunk: int | None,
    ) -> Iterator[StepTokens]:
        mask = batch.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if use_cache and self.model.fusion is None and self.pruning is None:  # the shared prompt prefix first
            embeds, mask, positions = prefix_first(embeds, mask, positions)
        generators = [
            torch.Generator().manual_seed(c.seed) if c.seed is not None and not c.greedy else None
            for c in cfgs
        ]
        n = embeds.shape[0]
        active = [c.max_new_tokens > 0 for c in cfgs]
        produced = [0] * n
        step_embeds, step_pos, past = embeds, positions, None
        if not all(active):
            yield StepTokens([], {i: "length" for i in range(n) if not active[i]})
        media = self._media_columns(batch) if self.pruning is not None else None
        while any(active):
            if past is None and media is not None:  # FastV: one prefill pass, then a shorter cache
                res = pruned_prefill(
                    self.model.llm, step_embeds, mask, step_pos, media, self.pruning, forward
                )
                mask, step_pos = res.mask, res.positions
            else:
                res = yield from self._forward(
                    forward, step_embeds, mask, step_pos, past, use_cache, prefill_chunk
                )
            if use_cache:
                past = res.past_key_values
            step = self._select(res.logits[:, -1, :], cfgs, generators, active, produced, cancelled)
            yield step
            if not any(active):
                break
            step_embeds, step_pos, mask = self._next_inputs(step, step_embeds, step_pos, mask, use_cache)

    def _forward(self, forward, embeds, mask, positions, past, use_cache: bool, prefill_chunk: int | None):
        """One pass of the LLM for the next token: the whole sequence without the cache (the reference
        path), the prompt through the cache (in chunks, with pauses) at the first step, else one column."""
        if not use_cache:
            return forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        if past is None:
            return (yield from self._prefill(forward, embeds, mask, positions, prefill_chunk))
        return forward(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )

    def _next_inputs(self, step: StepTokens, embeds, positions, mask, use_cache: bool):
        """The next pass's input embeddings, positions and mask: the new tokens (the pad token for rows
        that stopped) appended — alone with the cache, to the whole sequence without it."""
        n = embeds.shape[0]
        nxt = [self.processor.pad_id] * n
        for i, tok in step.tokens:
            nxt[i] = tok
        ids = torch.tensor(nxt, device=embeds.device)
        new_embed = self.model.llm.get_input_embeddings()(ids).unsqueeze(1).to(embeds.dtype)
        new_pos = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        if use_cache:
            return new_embed, new_pos, mask
        return torch.cat([embeds, new_embed], dim=1), torch.cat([positions, new_pos], dim=1), mask

    def _select(self, logits, cfgs, generators, active, produced, cancelled) -> StepTokens:
        """Pick each active row's next token. A row whose selection raises finishes with "error"
        (its exception in ``errors``): one request's failure must not end the others'. Rows that
        stopped feed the pad token from then on, which the mask of the live rows never reads."""
        greedy = logits.argmax(dim=-1).tolist()
        stop = set(self.processor.stop_ids)
        tokens, finished, errors = [], {}, {}
        for i, cfg in enumerate(cfgs):
            if not active[i]:
                continue
            if cancelled is not None and cancelled(i):
                active[i], finished[i] = False, "cancelled"
                continue
            try:
                tok = greedy[i] if cfg.greedy else _sample_row(logits[i], cfg, generators[i])
            except Exception as exc:  # reported for this row only, through ``errors``
                active[i], finished[i], errors[i] = False, "error", exc
                continue
            if tok in stop:
                active[i], finished[i] = False, "stop"
                continue
            tokens.append((i, tok))
            produced[i] += 1
            if produced[i] >= cfg.max_new_tokens:
                active[i], finished[i] = False, "length"
        return StepTokens(tokens, finished, errors)

    def generate_ids(
        self,
        prompts: Sequence[Sample],
        cfg: GenerationConfig | Sequence[GenerationConfig] = GenerationConfig(),
        use_cache: bool = True,
        prefill_chunk: int | None = None,
    ) -> list[list[int]]:
        cfgs = [cfg] * len(prompts) if isinstance(cfg, GenerationConfig) else list(cfg)
        encoded = [self.processor.encode(s, for_generation=True) for s in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        for step in self.stream(encoded, cfgs, use_cache, prefill_chunk=prefill_chunk):
            if step.errors:  # a caller of the whole answer has no way to take a partial batch
                raise next(iter(step.errors.values()))
            for i, tok in step.tokens:
                out[i].append(tok)
        return out

    def generate(
        self,
        prompts: Sequence[Sample],
        cfg: GenerationConfig | Sequence[GenerationConfig] = GenerationConfig(),
        use_cache: bool = True,
        prefill_chunk: int | None = None,
    ) -> list[str]:
        ids = self.generate_ids(prompts, cfg, use_cache, prefill_chunk)
        return [self.decode(t) for t in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
