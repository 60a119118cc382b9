"""Frame stacking + SwiGLU projector (Ultravox): shapes, token lengths, and batch invariance."""

from __future__ import annotations

import pytest
import torch

from omnifuse.connectors.stack import StackConnector


@pytest.mark.parametrize(
    ("frames", "factor", "tokens"), [(1, 8, 1), (8, 8, 1), (9, 8, 2), (100, 8, 13), (7, 1, 7)]
)
def test_token_counts(frames: int, factor: int, tokens: int) -> None:
    conn = StackConnector(16, 24, factor=factor)
    assert conn.num_output_tokens(frames) == tokens
    out, lengths = conn(torch.randn(1, frames, 16), torch.tensor([frames]))
    assert out.shape == (1, tokens, 24) and lengths.tolist() == [tokens]


def test_stacks_consecutive_frames_in_channel_order() -> None:
    """Token k sees exactly frames k·f … k·f+f−1: changing frame 5 changes token 1 (f = 4) and no other."""
    torch.manual_seed(0)
    conn = StackConnector(8, 12, factor=4).eval()
    x = torch.randn(1, 12, 8)
    base, _ = conn(x, torch.tensor([12]))
    x2 = x.clone()
    x2[0, 5] += 1.0
    moved, _ = conn(x2, torch.tensor([12]))
    changed = (moved - base).abs().amax(dim=-1)[0] > 1e-6
    assert changed.tolist() == [False, True, False]


def test_padding_frames_never_reach_a_clip_tokens() -> None:
    """A short clip batched with a long one gets the same tokens as alone, whatever the padding holds."""
    torch.manual_seed(0)
    conn = StackConnector(8, 12, factor=4).eval()
    short = torch.randn(1, 6, 8)
    alone, n_alone = conn(short, torch.tensor([6]))
    batch = torch.randn(2, 11, 8) * 50  # garbage past the short clip's 6 frames
    batch[1, :6] = short[0]
    together, n = conn(batch, torch.tensor([11, 6]))
    assert n.tolist() == [3, 2] and n_alone.tolist() == [2]
    assert torch.allclose(together[1, :2], alone[0], atol=1e-6)


def test_factor_must_be_positive() -> None:
    with pytest.raises(ValueError, match="factor must be at least 1"):
        StackConnector(8, 8, factor=0)
