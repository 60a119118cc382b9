"""Weights in safetensors (no pickles): the changed parameters of a model saved atomically, and loaded back
with every key, shape and value checked.

Below training, evaluation and the run reload, which all read or write weights; a training checkpoint
(``omnifuse.training.checkpoint``) stores its weights through these functions too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from omnifuse.atomic import atomic_write
from omnifuse.errors import OmnifuseError


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def exact_keys(given: Iterable[str], expected: Iterable[str], what: str) -> None:
    """Refuse a state dict whose keys differ from the model's: a silent partial load would answer
    with random weights where the missing ones belong."""
    given, expected = set(given), set(expected)
    unknown, missing = sorted(given - expected), sorted(expected - given)
    if not unknown and not missing:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_listed(missing)})")
    if unknown:
        parts.append(f"{len(unknown)} unknown ({_listed(unknown)})")
    raise OmnifuseError(
        f"{what}: the weights do not match the model: {' and '.join(parts)} parameter names; the folder "
        "belongs to another model or is incomplete. Export it again from its run directory"
    )


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as one process holds it: a sharded DTensor (FSDP) is gathered — a collective, so every
    process of the group calls it for the same tensors in the same order."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``target``: this process's shard where ``target`` is a
    sharded DTensor (every process read the same file, so no communication is needed)."""
    if isinstance(target, DTensor):
        value = value.to(target.device, target.dtype)
        try:
            return distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)
        except TypeError:  # a torch without src_data_rank: rank 0's copy is scattered (the same values)
            return distribute_tensor(value, target.device_mesh, target.placements)
    return value


def state_of(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The named parameters, detached whole copies (gathered from every process under FSDP: all call it);
    refused when any holds NaN or inf (training diverged), so a run directory never keeps weights that would
    answer garbage."""
    params = dict(model.named_parameters())
    state = {n: full(params[n].detach()).contiguous().clone() for n in names}
    bad = _non_finite(state)
    if bad:
        raise OmnifuseError(
            f"the weights {_listed(bad)} hold NaN or infinite values (training diverged); nothing was saved. "
            "Lower the learning rate or raise warm-up, then train again"
        )
    return state


def save_weights(
    model: nn.Module, names: list[str], path: Path, metadata: dict[str, str] | None = None
) -> None:
    save_tensors_atomic(state_of(model, names), path, metadata)


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file written beside its place and renamed over it (readers never see half a file)."""
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_tensors(path: Path, what: str = "weights file", hint: str | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, empty or damaged file is an OmnifuseError naming it."""
    if not path.is_file():
        raise OmnifuseError(f"{what} {path} does not exist; {hint or 'the run directory is incomplete'}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        reason = "it is empty" if path.stat().st_size == 0 else f"{type(exc).__name__}: {exc}"
        raise OmnifuseError(
            f"{what} {path} is not a readable safetensors file ({reason}); {hint or 'the run directory is damaged'}"
        ) from None


def load_weights(model: nn.Module, path: Path, expected: list[str] | None = None) -> list[str]:
    """Load a partial state dict (the changed parameters) into ``model``. Every key must be a parameter of
    the model, every one of ``expected`` must be there, shapes must match and values be finite — a file
    with half its keys or with NaNs would otherwise load and answer."""
    state = read_tensors(path)
    params = dict(model.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise OmnifuseError(
            f"{path} holds {len(unknown)} parameters this model does not have ({_listed(unknown)}); "
            "it was saved from a different recipe"
        )
    missing = [k for k in expected or () if k not in state]
    if missing or not state:
        raise OmnifuseError(
            f"{path} lacks {len(missing) or 'all'} of the {len(expected or ())} trained parameters "
            f"({_listed(missing) or 'it holds none'}); the file is incomplete or damaged. Train again, or resume "
            "the run so that its last checkpoint rewrites it"
        )
    shapes = [
        f"{k} {tuple(v.shape)} ≠ {tuple(params[k].shape)}"
        for k, v in state.items()
        if params[k].shape != v.shape
    ]
    if shapes:
        raise OmnifuseError(
            f"{path}: shapes differ from the model's ({_listed(shapes)}); it belongs to another recipe"
        )
    bad = _non_finite(state)
    if bad:
        raise OmnifuseError(f"{path}: {_listed(bad)} hold NaN or infinite values; the weights are unusable")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(like(params[k], v))
    return list(state)
