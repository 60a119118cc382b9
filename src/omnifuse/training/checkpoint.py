"""Atomic checkpoints in safetensors + JSON (no pickles): weights, optimizer state, RNG, progress.

A checkpoint is a folder written next to its final place and swapped in (``omnifuse.atomic.atomic_dir``),
so a crash mid-write leaves the previous checkpoint intact; ``omnifuse.atomic.recover_dir`` repairs a crash
inside the swap. The weights go through ``omnifuse.models.weights``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from omnifuse.atomic import atomic_dir
from omnifuse.errors import OmnifuseError
from omnifuse.models.weights import full, like, load_weights, read_tensors, state_of
from omnifuse.untrusted import json_fields, read_json


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


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The optimizer state keyed by parameter name (so it survives re-creating the optimizer), tensors
    whole (gathered under FSDP: every process calls it) and scalars apart."""
    names = {id(p): n for n, p in model.named_parameters()}
    opt_tensors, opt_meta = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    opt_tensors[f"{names[id(p)]}::{key}"] = full(value).contiguous()
                else:
                    opt_meta[f"{names[id(p)]}::{key}"] = value
    return opt_tensors, opt_meta


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    weight_names: list[str],
    optimizer: torch.optim.Optimizer,
    progress: dict,
    write: bool = True,
    extra: dict | None = None,
) -> None:
    """Every process of a sharded (FSDP) run calls this (the state is gathered); only ``write`` writes.
    ``extra``: more JSON sections of state.json (the privacy accountant's history)."""
    weights = state_of(model, weight_names)
    opt_tensors, opt_meta = optimizer_state(model, optimizer)
    if not write:
        return
    with atomic_dir(folder) as tmp:
        save_file(weights, str(tmp / "weights.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        state = {
            "progress": progress,
            "optimizer_scalars": opt_meta,
            "rng": rng_meta,
            "weights": weight_names,
            **(extra or {}),
        }
        (tmp / "state.json").write_text(json.dumps(state))


def read_progress(folder: Path, counts: tuple[str, ...] = ("stage", "step")) -> dict | None:
    """The checkpoint's state.json checked for the fields a resume reads (``counts``: the progress keys
    that must be non-negative integers); None when there is no checkpoint."""
    path = folder / "state.json"
    if not path.exists():
        return None
    where = f"{path} (the training checkpoint)"
    state = json_fields(
        read_json(path, "checkpoint state"),
        where,
        {"progress": dict, "optimizer_scalars": dict, "rng": dict, "weights": list},
    )
    progress = state["progress"]
    if not progress or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in progress.values()
    ):
        raise OmnifuseError(
            f"{where}: progress {progress!r} is damaged (counts expected); the checkpoint cannot be resumed. "
            "Start the run again into a new --out"
        )
    return state


def load_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    counts: tuple[str, ...] = ("stage", "step"),
) -> dict:
    """Restore weights, RNG and (unless ``optimizer`` is None) optimizer state; returns the progress.
    A damaged checkpoint is an OmnifuseError naming the file, before anything is changed."""
    state = read_progress(folder, counts)
    if state is None:
        raise OmnifuseError(f"{folder} holds no checkpoint (no state.json); the run cannot be resumed")
    rng = read_tensors(folder / "rng.safetensors", "checkpoint file")  # read before anything is changed
    opt_tensors = read_tensors(folder / "optimizer.safetensors", "checkpoint file") if optimizer else {}
    load_weights(model, folder / "weights.safetensors", expected=[str(n) for n in state["weights"]])
    try:
        set_rng_state(rng, state["rng"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OmnifuseError(f"{folder}: the saved random-number state is damaged ({exc})") from None
    if optimizer is None:
        return state["progress"]
    params = dict(model.named_parameters())
    per_param: dict[str, dict] = {}
    entries = [*opt_tensors.items(), *state["optimizer_scalars"].items()]
    for key, value in entries:
        name, sep, slot = key.partition("::")
        if not sep or name not in params:
            raise OmnifuseError(
                f"{folder}: optimizer state {key!r} names no trained parameter; the checkpoint is damaged"
            )
        param = params[name]
        if torch.is_tensor(value) and slot != "step":
            # As torch's Optimizer.load_state_dict does: moments on the parameter's device and dtype (the
            # file is read on the CPU), and sharded alike where the parameter is (FSDP).
            value = like(param, value.to(param.device, param.dtype))
        per_param.setdefault(name, {})[slot] = value
    for name, st in per_param.items():
        optimizer.state[params[name]] = st
    return state["progress"]
