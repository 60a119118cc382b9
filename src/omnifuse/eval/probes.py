"""Robustness probes for multimodal LLMs: how much does an answer depend on the image?

Each probe changes the evaluation's inputs and re-scores the same questions:

* ``blank``: every image replaced by a mid-grey image of the same size;
* ``noise-σ``: Gaussian pixel noise of standard deviation σ (fraction of the 0–255 range);
* ``shuffled``: each question gets the image of another sample (a seeded derangement), so an answer
  that stays right there came from the text alone;
* ``token-dropout-p``: each image token coming out of the connector is zeroed with probability p
  (a forward hook on the connectors, removed afterwards).

Besides accuracy, each row gives how many answers changed against the clean run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from omnifuse.data.sample import ImagePart, Sample
from omnifuse.errors import OmnifuseError
from omnifuse.eval.media import derangement, map_media
from omnifuse.eval.vqa import VQAResult, evaluate_vqa, normalize_answer
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing.processor import load_image

Transform = Callable[[Sequence[Sample], int], list[Sample]]


def replace_images(sample: Sample, make: Callable[[int, Image.Image], Image.Image]) -> Sample:
    """The sample with its k-th image replaced by ``make(k, decoded image)`` (decoded, never written)."""
    return map_media(
        sample, ImagePart, lambda k, p: ImagePart(image=make(k, load_image(p.source, sample.id)))
    )


def blank(samples: Sequence[Sample], seed: int) -> list[Sample]:
    return [replace_images(s, lambda k, img: Image.new("RGB", img.size, (128, 128, 128))) for s in samples]


def noise(sigma: float) -> Transform:
    def apply(samples: Sequence[Sample], seed: int) -> list[Sample]:
        rng = np.random.default_rng(seed)

        def noisy(k: int, img: Image.Image) -> Image.Image:
            a = np.asarray(img, dtype=np.float32)
            a = a + rng.normal(0.0, 255.0 * sigma, a.shape)
            return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

        return [replace_images(s, noisy) for s in samples]

    return apply


def shuffled(samples: Sequence[Sample], seed: int) -> list[Sample]:
    with_images = [i for i, s in enumerate(samples) if s.images()]
    if len(with_images) < 2:
        raise OmnifuseError("the shuffled-image probe needs at least two samples with images")
    perm = derangement(len(with_images), seed)
    donor = {with_images[i]: samples[with_images[j]] for i, j in enumerate(perm)}
    out = []
    for i, s in enumerate(samples):
        if i not in donor:
            out.append(s)
            continue
        other = donor[i].images()

        def take(k: int, img: Image.Image, other=other, sid=donor[i].id) -> Image.Image:
            return load_image(other[k % len(other)], sid)

        out.append(replace_images(s, take))
    return out


@contextmanager
def token_dropout(model: MultimodalLM, p: float, seed: int) -> Iterator[None]:
    """Zero each connector output token with probability ``p`` while the context is open."""
    generator = torch.Generator().manual_seed(seed)

    def hook(module, args, output: torch.Tensor) -> torch.Tensor:
        # drawn on the CPU generator (the same tokens dropped on every device), applied on the output's
        keep = torch.rand(output.shape[:-1], generator=generator, device="cpu") >= p
        return output * keep.unsqueeze(-1).to(output.device, output.dtype)

    handles = [c.register_forward_hook(hook) for c in model.connectors.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class Probe:
    name: str
    transform: Transform | None = None
    dropout: float = 0.0


DEFAULT_PROBES: tuple[Probe, ...] = (
    Probe("blank", blank),
    Probe("noise-0.1", noise(0.1)),
    Probe("noise-0.3", noise(0.3)),
    Probe("shuffled", shuffled),
    Probe("token-dropout-0.5", dropout=0.5),
)


@dataclass
class ProbeRow:
    probe: str
    result: VQAResult
    changed: float  # fraction of answers that differ from the clean run's

    def summary(self) -> dict:
        return {"probe": self.probe, **self.result.summary(), "answers_changed": self.changed}


def run_probes(
    engine: Engine,
    samples: Sequence[Sample],
    clean: VQAResult,
    cfg: GenerationConfig,
    batch_size: int,
    seed: int = 0,
    probes: Sequence[Probe] = DEFAULT_PROBES,
    progress: bool = True,
) -> list[ProbeRow]:
    """Score every probe on the same samples as ``clean`` (the unprobed result)."""
    base = {p["id"]: normalize_answer(p["prediction"]) for p in clean.predictions}
    rows = []
    for probe in probes:
        probed = probe.transform(samples, seed) if probe.transform else list(samples)
        dropout = token_dropout(engine.model, probe.dropout, seed) if probe.dropout else nullcontext()
        with dropout:
            result = evaluate_vqa(engine, probed, cfg, batch_size, progress=progress, label=probe.name)
        changed = sum(normalize_answer(p["prediction"]) != base[p["id"]] for p in result.predictions)
        rows.append(ProbeRow(probe.name, result, changed / max(1, result.n)))
    return rows
