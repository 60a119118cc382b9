"""Generation engine: batched greedy or sampled decoding with a KV cache.

It knows nothing of files or HTTP: it takes prompt samples (messages ending before the answer), or
prompts the processor has already encoded, and returns tokens or text. The CLI, the evaluator and the
server use it. Prompts are left-padded so that every row ends at the same column; positions come from
the attention mask so padding does not shift them.

Every row of a batch carries its own generation settings (the server batches requests that asked for
different lengths and temperatures), and ``stream`` yields the new tokens step by step so that a
caller can forward them as they come and cancel rows it no longer needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from omnifuse.data.sample import Sample
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Encoded, Processor


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # seeds this row's own generator: its tokens do not depend on the batch


def _sample_row(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class StepTokens:
    """The tokens one decoding step produced: (row, token) for rows still generating, and the rows
    that finished at this step with why ("stop": an end-of-turn token, "length": max_new_tokens)."""

    tokens: list[tuple[int, int]]
    finished: dict[int, str]


class Engine:
    def __init__(self, model: MultimodalLM, processor: Processor) -> None:
        self.model = model
        self.processor = processor

    @property
    def context_length(self) -> int | None:
        """The LLM's maximum sequence length (prompt + answer), if its config states one."""
        return getattr(self.model.llm.config, "max_position_embeddings", None)

    @torch.no_grad()
    def stream(
        self,
        encoded: Sequence[Encoded],
        cfgs: Sequence[GenerationConfig],
        use_cache: bool = True,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[StepTokens]:
        """Decode encoded prompts step by step, one config per row; rows for which ``cancelled(row)``
        turns true stop being generated (their finish reason is "cancelled")."""
        if len(cfgs) != len(encoded):
            raise ValueError(f"{len(encoded)} prompts but {len(cfgs)} generation configs")
        batch = self.processor.collate(list(encoded), padding_side="left")
        # Cross-attention fusion reads the media in every decoding step: they stay bound for the whole loop.
        with self.model.fuse(
            batch.input_ids, batch.media, batch.media_counts, batch.sample_ids, batch.media_lengths
        ) as embeds:
            yield from self._decode(batch, embeds, cfgs, use_cache, cancelled)

    def _decode(
        self,
        batch,
        embeds: torch.Tensor,
        cfgs: Sequence[GenerationConfig],
        use_cache: bool,
        cancelled: Callable[[int], bool] | None,
    ) -> Iterator[StepTokens]:
        proc, model = self.processor, self.model
        mask = batch.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [
            torch.Generator().manual_seed(c.seed) if c.seed is not None and c.temperature > 0 else None
            for c in cfgs
        ]
        stop = set(proc.stop_ids)
        embed_tokens = model.llm.get_input_embeddings()
        n = embeds.shape[0]
        active = [c.max_new_tokens > 0 for c in cfgs]
        produced = [0] * n
        past = None
        step_embeds, step_pos = embeds, positions
        if not all(active):
            yield StepTokens([], {i: "length" for i in range(n) if not active[i]})
        while any(active):
            if use_cache:
                res = model.llm(
                    inputs_embeds=step_embeds,
                    attention_mask=mask,
                    position_ids=step_pos,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
                past = res.past_key_values
            else:  # the reference path: recompute the whole sequence every step
                res = model.llm(
                    inputs_embeds=step_embeds, attention_mask=mask, position_ids=step_pos, use_cache=False
                )
            logits = res.logits[:, -1, :]
            greedy = logits.argmax(dim=-1).tolist()
            nxt = [proc.pad_id] * n
            tokens, finished = [], {}
            for i in range(n):
                if not active[i]:
                    continue
                if cancelled is not None and cancelled(i):
                    active[i] = False
                    finished[i] = "cancelled"
                    continue
                cfg = cfgs[i]
                tok = greedy[i] if cfg.temperature <= 0 else _sample_row(logits[i], cfg, generators[i])
                nxt[i] = tok
                if tok in stop:
                    active[i], finished[i] = False, "stop"
                    continue
                tokens.append((i, tok))
                produced[i] += 1
                if produced[i] >= cfg.max_new_tokens:
                    active[i], finished[i] = False, "length"
            yield StepTokens(tokens, finished)
            if not any(active):
                break
            new_embed = embed_tokens(torch.tensor(nxt)).unsqueeze(1)
            new_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
            if use_cache:
                step_embeds, step_pos = new_embed, new_pos
            else:
                step_embeds = torch.cat([step_embeds, new_embed], dim=1)
                step_pos = torch.cat([step_pos, new_pos], dim=1)

    def generate_ids(
        self,
        prompts: Sequence[Sample],
        cfg: GenerationConfig | Sequence[GenerationConfig] = GenerationConfig(),
        use_cache: bool = True,
    ) -> list[list[int]]:
        cfgs = [cfg] * len(prompts) if isinstance(cfg, GenerationConfig) else list(cfg)
        encoded = [self.processor.encode(s, for_generation=True) for s in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        for step in self.stream(encoded, cfgs, use_cache):
            for i, tok in step.tokens:
                out[i].append(tok)
        return out

    def generate(
        self,
        prompts: Sequence[Sample],
        cfg: GenerationConfig | Sequence[GenerationConfig] = GenerationConfig(),
        use_cache: bool = True,
    ) -> list[str]:
        ids = self.generate_ids(prompts, cfg, use_cache)
        return [self.decode(t) for t in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
