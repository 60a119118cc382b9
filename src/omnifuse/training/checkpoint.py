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
from omnifuse.untrusted import json_fields, read_json


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


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def state_of(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The named parameters, detached copies; refused when any holds NaN or inf (training diverged), so a
    run directory never keeps weights that would answer garbage."""
    params = dict(model.named_parameters())
    state = {n: params[n].detach().contiguous().clone() for n in names}
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
    tmp = temp_beside(path)
    mode = tmp.stat().st_mode & 0o777  # the process's normal permissions (umask applied)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # safetensors writes its files 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_tensors(path: Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, empty or damaged file is an OmnifuseError naming it."""
    if not path.is_file():
        raise OmnifuseError(f"{what} {path} does not exist; the run directory is incomplete")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        reason = "it is empty" if path.stat().st_size == 0 else f"{type(exc).__name__}: {exc}"
        raise OmnifuseError(
            f"{what} {path} is not a readable safetensors file ({reason}); the run directory is damaged"
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
        per_param.setdefault(name, {})[slot] = value
    for name, st in per_param.items():
        optimizer.state[params[name]] = st
    return state["progress"]
