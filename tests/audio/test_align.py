"""Rate alignment of feature sequences: lengths, frame-centre timing, windows and Ultravox stacking."""

from __future__ import annotations

import math

import pytest
import torch

from omnifuse.audio.align import (
    align_to_common_rate,
    resample_sequence,
    resampled_length,
    sliding_windows,
    stack_frames,
    stacked_lengths,
)
from omnifuse.errors import OmnifuseError


def _sine_frames(length: int, rate: float, freq: float = 2.0) -> torch.Tensor:
    """A [T, 2] sequence: sin and cos of a ``freq`` Hz tone sampled at the frame centres."""
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / rate
    return torch.stack([torch.sin(2 * math.pi * freq * t), torch.cos(2 * math.pi * freq * t)], dim=1)


@pytest.mark.parametrize(
    ("length", "src", "dst", "expected"),
    [
        (100, 50, 25, 50),
        (7, 50, 25, 4),
        (10, 25, 50, 20),
        (3, 100, 30, 1),
        (1, 100, 1, 1),
        (199, 100, 30, 60),
    ],
)
def test_lengths_round_half_up(length: int, src: float, dst: float, expected: int) -> None:
    assert resampled_length(length, src, dst) == expected
    assert resample_sequence(torch.randn(length, 3), src, dst).shape == (expected, 3)


@pytest.mark.parametrize(("src", "dst"), [(100, 50), (100, 30), (50, 100), (25, 50), (100, 160), (30, 29.97)])
def test_sine_phase_is_preserved(src: float, dst: float) -> None:
    length = 199  # not a multiple of the ratio: a size-based stretch would drift by a fraction of a frame
    out = resample_sequence(_sine_frames(length, src), src, dst)
    expected = _sine_frames(out.shape[0], dst)
    # inside the input's first and last centres (beyond them the edge frame is held)
    t = (torch.arange(out.shape[0]) + 0.5) / dst
    inside = (t >= 0.5 / src) & (t <= (length - 0.5) / src)
    assert inside.sum() >= out.shape[0] - 2
    # linear interpolation of a 2 Hz tone at >= 25 frames/s: error below (2 pi f / src)^2 / 8
    assert torch.allclose(out[inside], expected[inside], atol=(2 * math.pi * 2 / src) ** 2 / 8 + 1e-9)


def test_nearest_takes_the_covering_frame_and_identity_is_exact() -> None:
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]).unsqueeze(1)
    down = resample_sequence(labels, 50, 25, mode="nearest")
    assert down.squeeze(1).tolist() == [0.0, 1.0, 2.0]
    up = resample_sequence(down, 25, 50, mode="nearest")
    assert torch.equal(up, labels)
    x = torch.randn(2, 9, 4)
    assert torch.equal(resample_sequence(x, 50, 50), x)
    batched = resample_sequence(x, 50, 30)
    assert torch.equal(batched[1], resample_sequence(x[1], 50, 30))
    with pytest.raises(OmnifuseError, match="unknown resampling mode 'cubic'"):
        resample_sequence(x, 50, 25, mode="cubic")
    with pytest.raises(OmnifuseError, match="positive"):
        resample_sequence(x, 0, 25)


def test_align_to_common_rate_cuts_to_the_common_duration() -> None:
    seqs = {
        "audio": (torch.randn(100, 8), 50.0),  # 2.00 s
        "video": (torch.randn(49, 16), 25.0),  # 1.96 s
        "mel": (torch.randn(201, 80), 100.0),  # 2.01 s
    }
    out = align_to_common_rate(seqs, 25.0)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "audio": (49, 8),
        "video": (49, 16),
        "mel": (49, 80),
    }
    assert torch.equal(out["video"], seqs["video"][0])
    with pytest.raises(OmnifuseError, match="at least one"):
        align_to_common_rate({}, 25.0)


def test_sliding_windows() -> None:
    x = torch.arange(11 * 2, dtype=torch.float32).reshape(11, 2)
    full = sliding_windows(x, window=4, hop=3)
    assert full.shape == (3, 4, 2)  # (11 - 4) // 3 + 1
    for k in range(3):
        assert torch.equal(full[k], x[3 * k : 3 * k + 4])
    padded = sliding_windows(x, window=4, hop=3, pad=True)
    assert padded.shape == (4, 4, 2)  # ceil(7 / 3) + 1: frame 10 is covered
    assert torch.equal(padded[:3], full)
    assert torch.equal(padded[3, :2], x[9:11]) and not padded[3, 2:].any()
    assert sliding_windows(x[:3], window=4, hop=1).shape == (0, 4, 2)
    short = sliding_windows(x[:3], window=4, hop=1, pad=True)
    assert short.shape == (1, 4, 2) and torch.equal(short[0, :3], x[:3])
    with pytest.raises(OmnifuseError, match="at least 1"):
        sliding_windows(x, window=0, hop=1)


def test_stack_frames_order_and_padding() -> None:
    batch, length, dim, factor = 2, 7, 3, 3
    x = torch.arange(1, batch * length * dim + 1, dtype=torch.float32).reshape(batch, length, dim)
    out = stack_frames(x, factor)
    assert out.shape == (batch, 3, dim * factor)  # ceil(7 / 3)
    for b in range(batch):
        for t in range(3):
            for i in range(factor):
                chunk = out[b, t, i * dim : (i + 1) * dim]
                src = t * factor + i
                assert torch.equal(chunk, x[b, src] if src < length else torch.zeros(dim))
    assert torch.equal(stack_frames(x, 1), x)
    lengths = torch.tensor([7, 6, 1, 0])
    assert stacked_lengths(lengths, factor).tolist() == [3, 2, 1, 0]
    # a stacked frame is valid exactly when it holds a valid input frame
    mask = torch.arange(length)[None, :] < lengths[:, None]
    stacked_mask = stack_frames(mask[..., None].float(), factor).amax(-1) > 0
    assert stacked_mask.sum(1).tolist() == stacked_lengths(lengths, factor).tolist()
    with pytest.raises(OmnifuseError, match="at least 1"):
        stack_frames(x, 0)
