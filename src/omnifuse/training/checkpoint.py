"""Atomic checkpoints in safetensors + JSON (no pickles): weights, optimizer state, RNG, progress.

A checkpoint is a folder written next to its final place and renamed over it, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omnifuse.atomic import temp_beside
from omnifuse.errors import OmnifuseError


def atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def commit_dir(tmp: Path, final: Path) -> None:
    """Swap ``tmp`` into ``final``: the old folder is moved aside first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """Repair what a crash inside ``commit_dir`` can leave: if it died between moving the old folder
    aside and moving the new one in, the old folder is complete, so it is put back. Half-written
    temporary folders of a crashed ``atomic_dir`` are removed."""
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.is_dir():
        os.replace(old, final)
    for stale in final.parent.glob(f".{final.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def state_of(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().contiguous().clone() for n in names}


def save_weights(
    model: nn.Module, names: list[str], path: Path, metadata: dict[str, str] | None = None
) -> None:
    save_tensors_atomic(state_of(model, names), path, metadata)


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file written beside its place and renamed over it (readers never see half a file)."""
    tmp = temp_beside(path)
    mode = tmp.stat().st_mode & 0o777  # the process's normal permissions (umask applied)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # safetensors writes its files 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_weights(model: nn.Module, path: Path) -> list[str]:
    """Load a partial state dict (the changed parameters) into ``model``; every key must exist."""
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise OmnifuseError(
            f"{path} is not a readable safetensors file ({exc}); the run directory is damaged"
        ) from None
    params = dict(model.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise OmnifuseError(
            f"{path} holds {len(unknown)} parameters this model does not have (e.g. {unknown[0]}); "
            "it was saved from a different recipe"
        )
    with torch.no_grad():
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise OmnifuseError(
                    f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(params[k].shape)}"
                )
            params[k].copy_(v)
    return list(state)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    folder: Path, model: nn.Module, weight_names: list[str], optimizer: torch.optim.Optimizer, progress: dict
) -> None:
    tmp = atomic_dir(folder)
    try:
        save_file(state_of(model, weight_names), str(tmp / "weights.safetensors"))
        # Optimizer state keyed by parameter name, so it survives re-creating the optimizer.
        names = {id(p): n for n, p in model.named_parameters()}
        opt_tensors, opt_meta = {}, {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                st = optimizer.state.get(p, {})
                for key, value in st.items():
                    if torch.is_tensor(value):
                        opt_tensors[f"{names[id(p)]}::{key}"] = value.contiguous()
                    else:
                        opt_meta[f"{names[id(p)]}::{key}"] = value
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        state = {
            "progress": progress,
            "optimizer_scalars": opt_meta,
            "rng": rng_meta,
            "weights": weight_names,
        }
        (tmp / "state.json").write_text(json.dumps(state))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, folder)


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights, RNG and (unless ``optimizer`` is None) optimizer state; returns the progress."""
    state = json.loads((folder / "state.json").read_text())
    load_weights(model, folder / "weights.safetensors")
    set_rng_state(load_file(str(folder / "rng.safetensors")), state["rng"])
    if optimizer is None:
        return state["progress"]
    params = dict(model.named_parameters())
    opt_tensors = load_file(str(folder / "optimizer.safetensors"))
    per_param: dict[str, dict] = {}
    for key, value in opt_tensors.items():
        name, field = key.split("::")
        per_param.setdefault(name, {})[field] = value
    for key, value in state["optimizer_scalars"].items():
        name, field = key.split("::")
        per_param.setdefault(name, {})[field] = value
    for name, st in per_param.items():
        optimizer.state[params[name]] = st
    return state["progress"]
