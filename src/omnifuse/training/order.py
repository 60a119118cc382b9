"""The order in which a stage draws its training samples: a pure function of (seed, stage index, epoch),
so a resumed run draws what the uninterrupted one drew; optionally balanced over groups of samples, or
drawn from a weighted mixture of sources (Qwen-VL's stage 2: VQA + captions + grounding in one stage).

A mixture's source for each position is a pure function of (seed, stage, position) too — drawn in blocks
by a seeded ``torch.multinomial`` over the weights — so a resumed or multi-process run draws exactly the
samples of an uninterrupted one-process run, and the per-source counts of a stage are known exactly
before it runs (the loop prints and logs them). Within a source, samples are walked in that source's own
seeded shuffle, one epoch after another."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import StageSpec


def _shuffled(num: int, seed: int, stage_index: int, epoch: int, group: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 1009 + epoch * 7919 + group)
    return torch.randperm(num, generator=g).tolist()


BLOCK = 4096  # positions drawn per call of the generator


class Mixture:
    def __init__(self, weights: Sequence[float], seed: int, stage_index: int) -> None:
        self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)
        self.seed, self.stage_index = seed, stage_index
        self._blocks: list[torch.Tensor] = []  # source of each position, block by block
        self._before: list[torch.Tensor] = []  # draws per source before each block

    def _block(self, b: int) -> torch.Tensor:
        while len(self._blocks) <= b:
            k = len(self._blocks)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stage_index * 1009 + k * 7919 + 17)
            drawn = torch.multinomial(self.weights, BLOCK, replacement=True, generator=g)
            before = self._before[-1] + torch.bincount(self._blocks[-1], minlength=len(self.weights)) \
                if self._blocks else torch.zeros(len(self.weights), dtype=torch.long)  # fmt: skip
            self._blocks.append(drawn)
            self._before.append(before)
        return self._blocks[b]

    def turn(self, position: int) -> tuple[int, int]:
        """(source, how many earlier positions drew that source)."""
        b, i = divmod(position, BLOCK)
        block = self._block(b)
        source = int(block[i])
        return source, int(self._before[b][source]) + int((block[:i] == source).sum())

    def counts(self, positions: int) -> list[int]:
        """Draws per source among the first ``positions`` positions of the stream."""
        if positions <= 0:
            return [0] * len(self.weights)
        b, i = divmod(positions, BLOCK)
        last = self._block(b)
        return (self._before[b] + torch.bincount(last[:i], minlength=len(self.weights))).tolist()


@dataclass(frozen=True)
class Nested:
    """Groups drawn equally often within one group of the level above (``balance_by`` with several keys):
    each cycle through them visits every child once, in a fresh seeded order."""

    children: tuple[Sequence[int] | Nested, ...]


def _path_id(path: tuple[int, ...]) -> int:
    return zlib.crc32(repr(path).encode())


def sample_order(
    num: int,
    seed: int,
    stage_index: int,
    groups: Sequence[Sequence[int] | Nested] | None = None,
    weights: Sequence[float] | None = None,
) -> Callable[[int], int]:
    """Position in the stage's sample stream → sample index; a fresh seeded shuffle each epoch.

    With ``groups`` (lists of sample indices), positions cycle through the groups in turn and each
    group is walked in its own seeded shuffle: every group is drawn equally often, however large. A
    :class:`Nested` group splits its turns equally among its children the same way, level by level.
    With ``weights`` too (one per top-level group), each position draws its group from the seeded
    :class:`Mixture`.
    """
    perms: dict[tuple, list[int]] = {}
    mixture = Mixture(weights, seed, stage_index) if groups and weights else None

    def perm(key: tuple, n: int, epoch: int, group: int) -> list[int]:
        if key not in perms:
            perms[key] = _shuffled(n, seed, stage_index, epoch, group)
        return perms[key]

    def at(position: int) -> int:
        if not groups:
            epoch, k = divmod(position, num)
            return perm((0, epoch), num, epoch, 0)[k]
        gi, turn = mixture.turn(position) if mixture else (position % len(groups), position // len(groups))
        node, path = groups[gi], (gi,)
        while isinstance(node, Nested):
            cycle, slot = divmod(turn, len(node.children))
            child = perm(("cycle", path, cycle), len(node.children), cycle, _path_id(path) + 1)[slot]
            node, path, turn = node.children[child], (*path, child), cycle
        epoch, k = divmod(turn, len(node))
        group = gi + 1 if len(path) == 1 else _path_id(path)  # one level: the order of earlier versions
        return node[perm((path, epoch), len(node), epoch, group)[k]]

    return at


def _balance_value(sample: Sample, key: str) -> str:
    if key == "answer":
        return sample.answer()
    if key == "prompt":
        return "\n".join(m.text() for m in sample.prompt() if m.role == "user")
    if key not in sample.meta:
        raise OmnifuseError(
            f"balance_by: {key!r}: sample {sample.id} has no meta.{key}; every training sample needs it "
            "(or remove it from the stage's balance_by)"
        )
    return str(sample.meta[key])


def balance_groups(samples: Sequence[Sample], keys: Sequence[str]) -> list[list[int] | Nested]:
    """Sample indices grouped by the first key's value (sorted by value, so the order is reproducible),
    each group split by the next key's value in turn (:class:`Nested`)."""

    def split(indices: Sequence[int], level: int) -> list[list[int] | Nested]:
        by_value: dict[str, list[int]] = {}
        for i in indices:
            by_value.setdefault(_balance_value(samples[i], keys[level]), []).append(i)
        groups = [by_value[v] for v in sorted(by_value)]
        if level + 1 == len(keys):
            return groups
        return [Nested(tuple(split(g, level + 1))) for g in groups]

    return split(range(len(samples)), 0)


def stage_refs(stage: StageSpec, default: str) -> list[str]:
    """The data references a stage reads: a mixture's sources in order, or its one source (``default``:
    the recipe's data.train)."""
    return [m.source for m in stage.data] if isinstance(stage.data, tuple) else [stage.data or default]


def stage_steps(stage: StageSpec, num_samples: int, processes: int = 1) -> int:
    """Optimizer steps of a stage; an epoch counts global batches (``batch_size × grad_accum × processes``)."""
    if stage.steps is not None:
        return stage.steps
    per_step = stage.batch_size * stage.grad_accum * processes
    return max(1, math.ceil(stage.epochs * num_samples / per_step))


def stage_order(
    stage: StageSpec, stage_index: int, seed: int, parts: Sequence[Sequence[Sample]], processes: int
) -> tuple[Callable[[int], int], dict[str, int]]:
    """The order over ``parts`` concatenated (one part, or a mixture's sources in the recipe's order), and
    a mixture's draws per source over the whole stage (exact: the order is a pure function of the seed)."""
    num = sum(len(p) for p in parts)
    if not isinstance(stage.data, tuple):
        samples = [s for p in parts for s in p]
        balanced = balance_groups(samples, stage.balance_by) if stage.balance_by else None
        return sample_order(num, seed, stage_index, balanced), {}
    starts = [sum(len(p) for p in parts[:k]) for k in range(len(parts))]
    groups = [range(a, a + len(p)) for a, p in zip(starts, parts, strict=True)]
    weights = [m.weight for m in stage.data]
    global_batch = stage.batch_size * stage.grad_accum * processes
    drawn = Mixture(weights, seed, stage_index).counts(stage_steps(stage, num, processes) * global_batch)
    counts = {m.source: n for m, n in zip(stage.data, drawn, strict=True)}
    return sample_order(num, seed, stage_index, groups, weights), counts


__all__ = ["Mixture", "Nested", "balance_groups", "sample_order", "stage_order", "stage_refs", "stage_steps"]
