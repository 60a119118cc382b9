"""BLIP-2 stage 1 (representation learning, §3.2): the Q-Former alone on image–caption pairs, no LLM.

Three losses, summed with equal weights as in BLIP-2:

* ITC, image-text contrastive: each image is its query outputs, each caption its [CLS] output, both
  projected and L2-normalised; the image-text similarity is the *maximum* over queries; symmetric
  InfoNCE over the batch with a learnable temperature. Captions repeat in easy-vqa ("a red circle"), so
  every image with the same caption counts as a positive (soft targets, as BLIP with image ids).
* ITM, image-text matching: a binary head on the query outputs of a joint (queries + text,
  bidirectional) pass, averaged over queries. For each image one hard negative caption, and for each
  caption one hard negative image, are drawn ∝ softmax(ITC similarity) among the items whose caption
  differs (never the positive, never a duplicate caption).
* ITG, image-grounded text generation: causal LM over the caption, where text sees all queries and
  earlier text and queries never see text (:func:`omnifuse.connectors.qformer.itg_attention_mask`);
  the LM head is tied to the word embeddings.

BLIP-2 gathers the batch across GPUs for ITC and mining and uses label smoothing 0.1; here the batch
is the local micro-batch and there is no smoothing.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from omnifuse.alignment.contrastive import clip_loss
from omnifuse.connectors.qformer import QFormerConnector
from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.processing.processor import IGNORE_INDEX, load_image
from omnifuse.recipe import StageSpec
from omnifuse.training.objectives import StepOutput


@dataclass
class QFormerLosses:
    itc: torch.Tensor
    itm: torch.Tensor
    itg: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.itc + self.itm + self.itg

    def sum_of(self, names: Sequence[str]) -> torch.Tensor:
        """The chosen losses summed (``objective.losses``; all three by default, as in BLIP-2)."""
        terms = [getattr(self, n) for n in names]
        return functools.reduce(operator.add, terms)

    def parts(self) -> dict[str, float]:
        return {"itc": self.itc.item(), "itm": self.itm.item(), "itg": self.itg.item()}


def same_caption(captions: Sequence[str]) -> torch.Tensor:
    """[B, B] bool: True where the two items have the same caption (the diagonal included)."""
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    idx = torch.tensor([ids[c] for c in captions])
    return idx[:, None] == idx[None, :]


def itc_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, temp: torch.Tensor, same: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE. ``image_feats`` [B, Q, E] and ``text_feats`` [B, E], both L2-normalised;
    image i vs text j scores max_q <query_q(i), text(j)> / temp. Returns (loss, sim_i2t [B, B])."""
    sim_i2t = torch.einsum("iqe,je->ijq", image_feats, text_feats).max(dim=-1).values / temp
    return clip_loss(sim_i2t, same), sim_i2t


def sample_hard_negatives(
    sim: torch.Tensor, same: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One negative column per row of ``sim``, drawn ∝ softmax(row) over the columns with another
    caption (``~same``). Rows where every column shares the caption get -1 (no negative)."""
    allowed = ~same
    out = torch.full((sim.shape[0],), -1, dtype=torch.long)
    rows = allowed.any(dim=1)
    if rows.any():
        logits = sim[rows].detach().float().masked_fill(~allowed[rows], float("-inf"))
        probs = F.softmax(logits, dim=1)
        out[rows] = torch.multinomial(probs, 1, generator=generator).squeeze(1).cpu()
    return out


def qformer_losses(
    connector: QFormerConnector,
    features: torch.Tensor,
    captions: Sequence[str],
    generator: torch.Generator | None = None,
) -> QFormerLosses:
    """ITC + ITM + ITG for a batch of image features [B, P, D_enc] and their captions."""
    b = features.shape[0]
    if b < 2:
        raise OmnifuseError(
            "the qformer objective contrasts items within a batch, so it needs batch_size of at least 2"
        )
    device = features.device
    ids, mask = connector.tokenize(captions, device)
    same = same_caption(captions).to(device)

    # ITC: queries alone vs text alone.
    queries = connector.query_states(features)
    text = connector.text_states(ids, mask)
    image_feats = F.normalize(connector.vision_proj(queries), dim=-1)
    text_feats = F.normalize(connector.text_proj(text[:, 0]), dim=-1)
    temp = connector.temp.clamp(0.001, 0.5)
    itc, sim_i2t = itc_loss(image_feats, text_feats, temp, same)

    # ITM: positives, one hard negative caption per image, one hard negative image per caption.
    with torch.no_grad():
        neg_text = sample_hard_negatives(sim_i2t, same, generator).to(device)
        neg_image = sample_hard_negatives(sim_i2t.t(), same, generator).to(device)
    rows = torch.arange(b, device=device)
    has_t, has_i = neg_text >= 0, neg_image >= 0
    image_idx = torch.cat([rows, rows[has_t], neg_image[has_i]])
    text_idx = torch.cat([rows, neg_text[has_t], rows[has_i]])
    labels = torch.cat(
        [torch.ones(b, dtype=torch.long), torch.zeros(int(has_t.sum() + has_i.sum()), dtype=torch.long)]
    ).to(device)
    joint = connector.joint_states(features[image_idx], ids[text_idx], mask[text_idx])
    itm_logits = connector.itm_head(joint[:, : connector.num_queries]).mean(dim=1)
    itm = F.cross_entropy(itm_logits, labels)

    # ITG: text token t+1 predicted from queries + text ≤ t.
    hidden = connector.joint_states(features, ids, mask, causal=True)[:, connector.num_queries :]
    logits = connector.lm_logits(hidden[:, :-1])
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    itg = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    return QFormerLosses(itc, itm, itg)


def qformer_modality(model: MultimodalLM) -> str:
    names = [m for m, c in model.connectors.items() if isinstance(c, QFormerConnector)]
    if len(names) != 1:
        raise OmnifuseError(
            f"the qformer objective needs exactly one Q-Former connector, the model has {len(names)}; "
            "declare connectors: {image: {type: qformer}}"
        )
    return names[0]


def qformer_step(
    model: MultimodalLM, processor: Processor, samples: Sequence[Sample], stage: StageSpec | None = None
) -> StepOutput:
    """One micro-batch of stage 1: each sample is one image (user turn) and its caption (answer)."""
    modality = qformer_modality(model)
    transform = processor.media[modality].transform
    pixels = []
    for s in samples:
        images = s.images()
        if len(images) != 1:
            raise OmnifuseError(
                f"sample {s.id}: the qformer objective trains on image-caption pairs, one image each, but it "
                f"has {len(images)}; use a captions data set such as easy-vqa-captions:train"
            )
        pixels.append(transform(load_image(images[0], s.id)))
    captions = [s.answer() for s in samples]
    encoder = model.encoders[modality]
    trains = any(p.requires_grad for p in encoder.parameters())
    with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
        features = encoder(torch.stack(pixels).to(processor.device))
    connector = model.connectors[modality]
    losses = qformer_losses(connector, features, captions)
    num_tokens = len(samples) * connector.num_queries + int(connector.tokenize(captions)[1].sum())
    chosen = ("itc", "itm", "itg") if stage is None else stage.objective.losses
    return StepOutput(losses.sum_of(chosen), losses.parts(), num_tokens, len(samples))
