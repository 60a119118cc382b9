"""The order in which a stage draws its training samples: a pure function of (seed, stage index, epoch),
so a resumed run draws what the uninterrupted one drew; optionally balanced over groups of samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError


def _shuffled(num: int, seed: int, stage_index: int, epoch: int, group: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 1009 + epoch * 7919 + group)
    return torch.randperm(num, generator=g).tolist()


def sample_order(
    num: int, seed: int, stage_index: int, groups: Sequence[Sequence[int]] | None = None
) -> Callable[[int], int]:
    """Position in the stage's sample stream → sample index; a fresh seeded shuffle each epoch.

    With ``groups`` (lists of sample indices), positions cycle through the groups in turn and each
    group is walked in its own seeded shuffle: every group is drawn equally often, however large.
    """
    perms: dict[tuple[int, int], list[int]] = {}

    def at(position: int) -> int:
        if not groups:
            epoch, k = divmod(position, num)
            if (0, epoch) not in perms:
                perms[0, epoch] = _shuffled(num, seed, stage_index, epoch)
            return perms[0, epoch][k]
        gi, turn = position % len(groups), position // len(groups)
        members = groups[gi]
        epoch, k = divmod(turn, len(members))
        if (gi, epoch) not in perms:
            perms[gi, epoch] = _shuffled(len(members), seed, stage_index, epoch, gi + 1)
        return members[perms[gi, epoch][k]]

    return at


def balance_groups(samples: Sequence[Sample], key: str) -> list[list[int]]:
    """Sample indices grouped by ``meta[key]`` (sorted by value, so the order is reproducible)."""
    by_value: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if key not in s.meta:
            raise OmnifuseError(
                f"balance_by: {key!r}: sample {s.id} has no meta.{key}; every training sample needs it "
                "(or remove balance_by from the stage)"
            )
        by_value.setdefault(str(s.meta[key]), []).append(i)
    return [by_value[v] for v in sorted(by_value)]


__all__ = ["balance_groups", "sample_order"]
