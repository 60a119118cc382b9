"""Temporal alignment of feature sequences sampled at different rates (audio frames, video frames, mel).

Time convention, used by every function here: frame ``i`` of a sequence at ``rate`` frames per second
covers ``[i / rate, (i + 1) / rate)`` and stands for its centre, ``(i + 0.5) / rate``. A sequence of
``T`` frames lasts ``T / rate`` seconds. Resampling evaluates the input at the output frames' centres,
so a 50 Hz Whisper frame and a 25 fps video frame that cover the same instant line up, and the phase
of a periodic signal survives a change of rate (tested with a sine).

Sequences are ``[T, D]`` or ``[B, T, D]``: time is always the second-to-last axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from omnifuse.errors import OmnifuseError

_MODES = {"linear": "linear", "nearest": "nearest-exact"}  # nearest-exact: the centre-aligned nearest


def resampled_length(length: int, src_rate: float, dst_rate: float) -> int:
    """Frames at ``dst_rate`` for ``length`` frames at ``src_rate``: the same duration, rounded half up
    (at least one frame)."""
    return max(1, math.floor(length * dst_rate / src_rate + 0.5))


def resample_sequence(x: Tensor, src_rate: float, dst_rate: float, mode: str = "linear") -> Tensor:
    """``x`` ([T, D] or [B, T, D]) from ``src_rate`` to ``dst_rate`` frames per second.

    The output has ``resampled_length(T, src, dst)`` frames; output frame ``j`` is the input evaluated
    at time ``(j + 0.5) / dst_rate`` by linear interpolation between the neighbouring input centres
    (``mode="linear"``) or by taking the input frame that covers that time (``mode="nearest"``, for
    labels or masks). Beyond the first/last input centre the edge frame is held.
    """
    if mode not in _MODES:
        raise OmnifuseError(f"unknown resampling mode {mode!r}; use one of: {', '.join(_MODES)}.")
    if src_rate <= 0 or dst_rate <= 0:
        raise OmnifuseError(f"frame rates must be positive, got {src_rate} -> {dst_rate}.")
    if x.dim() not in (2, 3) or x.shape[-2] == 0:
        raise OmnifuseError(f"a sequence must be [T, D] or [B, T, D] with T > 0, got shape {tuple(x.shape)}.")
    batched = x if x.dim() == 3 else x.unsqueeze(0)
    length = batched.shape[1]
    out_len = resampled_length(length, src_rate, dst_rate)
    scale = dst_rate / src_rate
    # interpolate with an explicit scale_factor (recompute_scale_factor=False) maps output j to input
    # (j + 0.5) / scale - 0.5, i.e. centres to centres in time; given a size instead it would stretch
    # T onto out_len frames and drift by up to half a frame. A scale_factor yields floor(T * scale)
    # frames, so the tail is padded with copies of the last frame (what the edge rule holds anyway)
    # until there are at least out_len, and the surplus is cut.
    pad = math.ceil(1 / scale) + 1
    channels_first = F.pad(batched.transpose(1, 2), (0, pad), mode="replicate")
    out = F.interpolate(channels_first, scale_factor=scale, mode=_MODES[mode], recompute_scale_factor=False)[
        ..., :out_len
    ].transpose(1, 2)
    return out if x.dim() == 3 else out.squeeze(0)


def align_to_common_rate(
    seqs: dict[str, tuple[Tensor, float]], rate: float, mode: str = "linear"
) -> dict[str, Tensor]:
    """Each ``name: (sequence, its rate)`` resampled to ``rate`` and cut to the shortest duration, so
    frame ``i`` of every output covers the same instant."""
    if not seqs:
        raise OmnifuseError("align_to_common_rate needs at least one sequence.")
    out = {name: resample_sequence(x, src, rate, mode) for name, (x, src) in seqs.items()}
    common = min(x.shape[-2] for x in out.values())
    return {name: x[..., :common, :] for name, x in out.items()}


def sliding_windows(x: Tensor, window: int, hop: int, pad: bool = False) -> Tensor:
    """Windows of ``window`` frames every ``hop`` frames: [T, D] -> [N, window, D].

    Without ``pad`` only full windows are kept (N = (T - window) // hop + 1, 0 when T < window); with
    it the tail is zero-padded so that every frame lies in some window (N = ceil((T - window) / hop) + 1,
    at least 1).
    """
    if window < 1 or hop < 1:
        raise OmnifuseError(f"window and hop must be at least 1, got window={window}, hop={hop}.")
    if x.dim() != 2:
        raise OmnifuseError(f"sliding_windows takes a [T, D] sequence, got shape {tuple(x.shape)}.")
    length = x.shape[0]
    if pad:
        n = math.ceil(max(length - window, 0) / hop) + 1
        x = F.pad(x, (0, 0, 0, (n - 1) * hop + window - length))
    elif length < window:
        return x.new_zeros(0, window, x.shape[1])
    return x.unfold(0, window, hop).transpose(1, 2)  # unfold puts the window last: [N, D, window]


def stack_frames(x: Tensor, factor: int) -> Tensor:
    """Ultravox frame stacking: [B, T, D] -> [B, ceil(T / factor), D * factor].

    Output frame ``t`` holds input frames ``t * factor + i`` for ``i < factor``, frame ``i`` in channels
    ``[i * D, (i + 1) * D)``; the tail is zero-padded to a multiple of ``factor``.
    """
    if factor < 1:
        raise OmnifuseError(f"the stacking factor must be at least 1, got {factor}.")
    if x.dim() != 3:
        raise OmnifuseError(f"stack_frames takes a [B, T, D] batch, got shape {tuple(x.shape)}.")
    batch, length, dim = x.shape
    padded = F.pad(x, (0, 0, 0, -length % factor))
    return padded.reshape(batch, padded.shape[1] // factor, dim * factor)


def stacked_lengths(lengths: Tensor, factor: int) -> Tensor:
    """Valid frames after :func:`stack_frames` for sequences of ``lengths`` valid frames: ceil(len / factor)
    (a stacked frame is valid when it holds at least one valid input frame)."""
    if factor < 1:
        raise OmnifuseError(f"the stacking factor must be at least 1, got {factor}.")
    return torch.div(lengths + factor - 1, factor, rounding_mode="floor")
