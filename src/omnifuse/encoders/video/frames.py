"""A video as its sampled frames, each through any image encoder (Video-LLaMA's frame path).

The processor decodes and samples a clip (omnifuse.video: ``Clip`` — frames and their timestamps);
:meth:`FrameEncoder.preprocess` applies the image encoder's own transform to every frame and stacks them
with the frames on the *last* axis, ``[3, H, W, N]``, so that a batch of clips with different frame counts
(``fps`` sampling) is padded and its lengths recorded by the processor's variable-length collate, as audio
clips are. :meth:`forward` runs the image encoder on the real frames only and returns every clip's frame
tokens in time order, ``[B, N_max · P, D]``, with each clip's token count ``n · P``. The temporal
connectors (omnifuse.connectors.video) read ``tokens_per_frame`` to see the frames again.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from omnifuse.video import Clip


class FrameEncoder(nn.Module):
    def __init__(self, image: nn.Module, max_frames: int) -> None:
        super().__init__()
        self.image = image
        self.max_frames = max_frames
        self.output_dim = image.output_dim
        self.tokens_per_frame = image.num_tokens()
        self.frame_grid = image.token_grid()

    def num_tokens(self, length: int | None = None) -> int:
        """Tokens of a clip of ``length`` frames (default: the most frames a clip may have)."""
        return (self.max_frames if length is None else length) * self.tokens_per_frame

    def token_grid(self) -> None:
        return None  # frames × tokens is no single grid over one image

    def preprocess(self, clip: Clip) -> torch.Tensor:
        frames = [self.image.preprocess(Image.fromarray(f)) for f in clip.frames]
        return torch.stack(frames, dim=-1)  # [3, H, W, N]

    def forward(
        self, pixels: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels`` [B, 3, H, W, N_max], ``lengths`` [B] frames → ([B, N_max·P, D], [B] tokens)."""
        batch, n_max = pixels.shape[0], pixels.shape[-1]
        if lengths is None:
            lengths = torch.full((batch,), n_max, device=pixels.device)
        frames = pixels.movedim(-1, 1)  # [B, N_max, 3, H, W]
        real = torch.arange(n_max, device=pixels.device)[None, :] < lengths[:, None]
        feats = self.image(frames[real])  # [Σn, P, D]: padded frames are never encoded
        out = feats.new_zeros(batch, n_max, *feats.shape[1:])
        out[real] = feats
        return out.reshape(batch, n_max * feats.shape[1], feats.shape[2]), lengths * feats.shape[1]
