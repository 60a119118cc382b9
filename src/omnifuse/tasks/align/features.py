"""The pairs an alignment method trains and is evaluated on: the frozen encoders' (cached) features of the
two modalities of each sample, normalised with train-split statistics, and the pairs' keys.

Modality A and B are read from each sample by the encoders' input kinds (the text encoder reads the
answer — a caption — or the question, ``model.text``). A sample's answer is also its *key*: pairs with the
same key mean the same thing, so in retrieval every item with the query's key counts as right, and
contrastive losses treat them as positives (``method.positives: key``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from omnifuse.alignment.retrieval import distinct_items
from omnifuse.data.sample import Message, Sample, TextPart, select_subset
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.models.features import Normalizer, extract_features
from omnifuse.recipe import AlignRecipe
from omnifuse.runtime import Placement


@dataclass(frozen=True)
class Pairs:
    """Normalised features of the two modalities, row i of each forming pair i, and the pairs' keys."""

    a: torch.Tensor
    b: torch.Tensor
    keys: list[str]
    ids: tuple[str, ...] = ()  # the samples' ids (predictions.jsonl)

    def key_ids(self) -> torch.Tensor:
        """Each pair's key as an integer, on the features' device."""
        ids = {k: i for i, k in enumerate(dict.fromkeys(self.keys))}
        return torch.tensor([ids[k] for k in self.keys], device=self.a.device)

    def to(self, device: torch.device) -> Pairs:
        return replace(self, a=self.a.to(device), b=self.b.to(device))


def _text_sample(sample_id: str, text: str) -> Sample:
    """A one-turn sample holding ``text`` as its question: the text encoder reads the user turn."""
    return Sample(sample_id, (Message("user", (TextPart(text),)),))


def _features(
    samples: Sequence[Sample],
    modality: str,
    spec,
    text_source: str,
    progress: bool,
    placement: Placement | None,
) -> torch.Tensor:
    if spec.reads != "text" or text_source == "question":
        return extract_features(samples, modality, spec, progress=progress, placement=placement)
    # The answers (captions, class names) repeat: encode each distinct one once.
    answers = [s.answer() for s in samples]
    unique = list(dict.fromkeys(answers))
    feats = extract_features(
        [_text_sample(f"answer-{i}", t) for i, t in enumerate(unique)],
        modality,
        spec,
        progress=progress,
        placement=placement,
    )
    row = {t: i for i, t in enumerate(unique)}
    return feats[[row[t] for t in answers]]


def paired_features(
    recipe: AlignRecipe,
    progress: bool = True,
    exclude_train: frozenset[str] = frozenset(),
    norms: dict[str, Normalizer] | None = None,
    placement: Placement | None = None,
) -> tuple[Pairs, Pairs, dict[str, Normalizer], list[str]]:
    """Train and eval pairs (normalised with train statistics, on the CPU), the normalisers, the modality names.
    Training pairs whose key is in ``exclude_train`` are left out, before the statistics are taken
    (DeViSE's held-out classes must stay unseen). ``norms``: a trained run's normalisers, used instead
    of fitting them again. ``placement``: where the encoders' networks run."""
    model = recipe.model
    names = list(model.encoders)
    splits = {}
    for split, ref, limit in (
        ("train", recipe.data.train, recipe.data.train_limit),
        ("eval", recipe.data.eval, recipe.data.eval_limit),
    ):
        seed = recipe.seed if split == "train" else recipe.data.eval_seed
        samples = select_subset(load_data(ref), limit, seed)
        if len(samples) < 2:
            raise OmnifuseError(f"data.{split} ({ref}) has {len(samples)} samples; alignment needs pairs")
        feats = {m: _features(samples, m, model.encoders[m], model.text, progress, placement) for m in names}
        keys, ids = [s.answer() for s in samples], [s.id for s in samples]
        if split == "train" and exclude_train:  # after extraction, so the cached features stay shared
            keep = [i for i, k in enumerate(keys) if k not in exclude_train]
            feats, keys, ids = (
                {m: f[keep] for m, f in feats.items()},
                [keys[i] for i in keep],
                [ids[i] for i in keep],
            )
        splits[split] = (feats, keys, ids)
    if norms is None:
        norms = {m: Normalizer.fit(model.normalization(m), splits["train"][0][m]) for m in names}
    train, evl = (
        Pairs(norms[names[0]](f[names[0]]), norms[names[1]](f[names[1]]), keys, tuple(ids))
        for f, keys, ids in (splits["train"], splits["eval"])
    )
    return train, evl, norms, names


@dataclass(frozen=True)
class Gallery:
    """The eval items of each side for retrieval, identical items (the same caption many times) collapsed."""

    a: torch.Tensor
    keys_a: list[str]
    b: torch.Tensor
    keys_b: list[str]
    ids_a: tuple[str, ...] = ()  # the sample each item was first seen in
    ids_b: tuple[str, ...] = ()

    @classmethod
    def of(cls, pairs: Pairs) -> Gallery:
        ia, ib = distinct_items(pairs.a, pairs.keys), distinct_items(pairs.b, pairs.keys)
        ids = pairs.ids or tuple(str(i) for i in range(len(pairs.keys)))
        return cls(
            pairs.a[ia], [pairs.keys[i] for i in ia], pairs.b[ib], [pairs.keys[i] for i in ib],
            tuple(ids[i] for i in ia), tuple(ids[i] for i in ib),
        )  # fmt: skip

    def to(self, device: torch.device) -> Gallery:
        return replace(self, a=self.a.to(device), b=self.b.to(device))
