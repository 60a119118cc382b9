"""The small networks every alignment method puts on top of frozen features."""

from __future__ import annotations

from torch import nn

from omnifuse.errors import OmnifuseError


def mlp(
    in_dim: int, out_dim: int, hidden: int | None = None, depth: int = 2, dropout: float = 0.0
) -> nn.Module:
    """A linear map (``hidden`` None), or ``depth`` linear layers with GELU and dropout between them —
    the projection heads of CLIP-style dual encoders and the towers of deep CCA / the cycle autoencoder."""
    if hidden is None:
        return nn.Linear(in_dim, out_dim)
    if depth < 2:
        raise OmnifuseError(f"an MLP with a hidden width needs depth ≥ 2, got {depth}")
    dims = [in_dim] + [hidden] * (depth - 1)
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), nn.GELU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)
