"""BLIP-2's caption stage scored on held-out images: the Q-Former writes the captions itself.

Stage 1 of BLIP-2 (``objective: {type: qformer}``) trains the Q-Former with image-grounded text
generation (ITG) among its losses: its text half, reading the learned queries, is a small caption
decoder. A stage that names held-out data (``objective: {type: qformer, eval: easy-vqa-captions:test}``)
is scored after training: greedy ITG decoding from ``[CLS]`` until ``[SEP]`` (or the Q-Former's
``max_text_len``), then BLEU-4 / CIDEr-D / ROUGE-L with bootstrap intervals over images
(:mod:`omnifuse.eval.captioning`). The LLM is not run: this is the stage's own output. The weights are
the run's final ones, so a later stage that trains the Q-Former (BLIP-2's stage 2, ``connectors: full``)
has moved its shared layers since; the score says what the caption decoder still knows then.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from omnifuse.connectors.qformer import QFormerConnector
from omnifuse.data.sample import Sample, select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.captioning import caption_references, caption_scores
from omnifuse.processing.processor import load_image
from omnifuse.progress import progress_bar

EXAMPLES = 8  # captions kept in eval.json (and shown in the report) per stage


@torch.no_grad()
def itg_greedy(connector: QFormerConnector, features: torch.Tensor, max_len: int | None = None) -> list[str]:
    """Greedy ITG captions of a batch of image features [B, P, D_enc]: each step appends the most likely
    next token of every caption (text sees all queries and its own past: the ITG mask)."""
    tok = connector.tokenizer
    start, stop = tok.cls_token_id, tok.sep_token_id
    if start is None or stop is None:
        raise OmnifuseError(
            "the Q-Former's tokenizer has no [CLS]/[SEP] token, which ITG decoding starts/ends with"
        )
    b = features.shape[0]
    ids = torch.full((b, 1), start, dtype=torch.long, device=features.device)
    done = torch.zeros(b, dtype=torch.bool, device=features.device)
    for _ in range((max_len or connector.max_text_len) - 1):
        hidden = connector.joint_states(features, ids, torch.ones_like(ids), causal=True)[:, -1:]
        nxt = connector.lm_logits(hidden)[:, 0].argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, stop), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == stop
        if bool(done.all()):
            break
    captions = []
    for row in ids[:, 1:].tolist():
        row = row[: row.index(stop)] if stop in row else row
        captions.append(tok.decode(row, skip_special_tokens=True).strip())
    return captions


def _qformer(model) -> tuple[str, QFormerConnector]:
    found = [(m, c) for m, c in model.connectors.items() if isinstance(c, QFormerConnector)]
    if len(found) != 1:
        raise OmnifuseError(
            f"captioning with the Q-Former needs exactly one Q-Former connector; the model has {len(found)}"
        )
    return found[0]


def qformer_captions(
    model, processor, samples: Sequence[Sample], batch_size: int = 32, progress: bool = False
) -> list[str]:
    """One ITG caption per sample (each sample: one image)."""
    modality, connector = _qformer(model)
    transform = processor.media[modality].transform
    encoder = model.encoders[modality]
    out: list[str] = []
    with progress_bar("captions (Q-Former)", len(samples), enabled=progress) as bar:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            pixels = []
            for s in chunk:
                if len(s.images()) != 1:
                    raise OmnifuseError(
                        f"sample {s.id}: a caption sample holds one image, it has {len(s.images())}"
                    )
                pixels.append(transform(load_image(s.images()[0], s.id)))
            with torch.no_grad():
                features = encoder(torch.stack(pixels).to(processor.device))
            out += itg_greedy(connector, features.to(next(connector.parameters()).dtype))
            bar.advance(len(chunk))
    return out


def stage_captions(recipe, model, processor, batch_size: int = 32, progress: bool = False) -> dict | None:
    """{stage name: caption scores} for every qformer stage with held-out ``eval`` data; None if none."""
    stages = [s for s in recipe.stages if s.objective.type == "qformer" and s.objective.eval is not None]
    if not stages:
        return None
    was_training = model.training
    model.eval()
    out = {}
    try:
        for stage in stages:
            obj = stage.objective
            samples = select_subset(load_data(obj.eval), obj.eval_limit, recipe.data.eval_seed)
            if not samples:
                raise OmnifuseError(f"stage {stage.name}: {obj.eval} holds no samples to caption")
            t0 = time.perf_counter()
            captions = qformer_captions(model, processor, samples, batch_size, progress)
            refs = [caption_references(s) for s in samples]
            scores = caption_scores(captions, refs).summary()
            examples = [
                {"id": s.id, "prediction": c, "references": r}
                for s, c, r in list(zip(samples, captions, refs, strict=True))[:EXAMPLES]
            ]
            seconds = round(time.perf_counter() - t0, 1)
            out[stage.name] = {"data": obj.eval, "decoder": "Q-Former ITG, greedy", **scores,
                               "seconds": seconds, "examples": examples}  # fmt: skip
    finally:
        model.train(was_training)
    return out
