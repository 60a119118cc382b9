"""Generation engine: batched greedy or sampled decoding with a KV cache.

It knows nothing of files or HTTP: it takes prompt samples (messages ending before the answer) and
returns text. The CLI, the evaluator and the server use it. Prompts are left-padded so that every row
ends at the same column; positions come from the attention mask so padding does not shift them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omnifuse.data.sample import Sample
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


def _sample_next(
    logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None
) -> torch.Tensor:
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Engine:
    def __init__(self, model: MultimodalLM, processor: Processor) -> None:
        self.model = model
        self.processor = processor

    @torch.no_grad()
    def generate_ids(
        self, prompts: Sequence[Sample], cfg: GenerationConfig = GenerationConfig(), use_cache: bool = True
    ) -> list[list[int]]:
        proc, model = self.processor, self.model
        batch = proc.collate([proc.encode(s, for_generation=True) for s in prompts], padding_side="left")
        # Cross-attention fusion reads the media in every decoding step: they stay bound for the whole loop.
        with model.fuse(batch.input_ids, batch.media, batch.media_counts, batch.sample_ids) as embeds:
            return self._decode(batch, embeds, cfg, use_cache)

    def _decode(self, batch, embeds: torch.Tensor, cfg: GenerationConfig, use_cache: bool) -> list[list[int]]:
        proc, model = self.processor, self.model
        mask = batch.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        stop = torch.tensor(proc.stop_ids or [-1])
        embed_tokens = model.llm.get_input_embeddings()
        n = embeds.shape[0]
        done = torch.zeros(n, dtype=torch.bool)
        out = torch.full((n, cfg.max_new_tokens), -1, dtype=torch.long)
        past = None
        step_embeds, step_pos = embeds, positions
        for t in range(cfg.max_new_tokens):
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
            nxt = _sample_next(res.logits[:, -1, :], cfg, generator)
            nxt = torch.where(done, torch.full_like(nxt, proc.pad_id), nxt)
            out[:, t] = torch.where(done, torch.full_like(nxt, -1), nxt)
            done |= torch.isin(nxt, stop)
            if bool(done.all()):
                break
            new_embed = embed_tokens(nxt).unsqueeze(1)
            new_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
            if use_cache:
                step_embeds, step_pos = new_embed, new_pos
            else:
                step_embeds = torch.cat([step_embeds, new_embed], dim=1)
                step_pos = torch.cat([step_pos, new_pos], dim=1)
        stop_set = set(proc.stop_ids)
        result = []
        for row in out.tolist():
            toks = []
            for tok in row:
                if tok < 0 or tok in stop_set:
                    break
                toks.append(tok)
            result.append(toks)
        return result

    def generate(
        self, prompts: Sequence[Sample], cfg: GenerationConfig = GenerationConfig(), use_cache: bool = True
    ) -> list[str]:
        ids = self.generate_ids(prompts, cfg, use_cache)
        return [self.processor.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
