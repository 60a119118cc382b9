"""The hf format's parameter names, and its weights written and read back (safetensors only).

The mapping is the identity: a tensor's name in the folder is its name in omnifuse's
:class:`~omnifuse.models.multimodal.MultimodalLM` state dict (``encoders.<modality>.*``,
``connectors.<modality>.*``, ``fusion.*``, ``llm.*``), buffers included (a CNN's batch-norm
statistics). A tensor shared by several names (tied input and output embeddings) is stored once, under
the first name the state dict gives it; the rebuilt model ties it again by itself. Reading is strict: a
name the model lacks, one it expects and the folder lacks, a misshapen or non-finite tensor, a damaged
or missing shard — each is an error naming them, never a partial load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.models.weights import exact_keys, read_tensors
from omnifuse.untrusted import read_json

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
HINT = "the exported folder is damaged or incomplete; export it again from its run directory"


def folder_name(name: str) -> str:
    """The name a MultimodalLM tensor has in the folder (the identity: omnifuse's names are the format)."""
    return name


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as the folder stores it: folder names, each shared tensor once."""
    seen: dict[tuple[int, int, tuple], str] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.device.type != "meta" and key in seen:
            continue  # tied to an earlier name
        seen[key] = name
        state[folder_name(name)] = tensor
    return state


def write_weights(model: nn.Module, folder: Path, dtype: torch.dtype, max_shard_size: str) -> None:
    """Safetensors shards of at most ``max_shard_size`` (with an index when there are several);
    floating tensors in ``dtype``, integer ones (batch-norm step counters) as they are."""
    state = {
        n: (t.to(dtype) if t.is_floating_point() else t).detach().contiguous().cpu().clone()
        for n, t in stored_state(model).items()
    }
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _shards(folder: Path) -> dict[str, list[str] | None]:
    """shard file → the names the index puts there (None: a single file, no index)."""
    if (folder / INDEX).is_file():
        index = read_json(folder / INDEX, "weights index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise OmnifuseError(f"{folder / INDEX} has no valid weight_map; {HINT}")
        shards: dict[str, list[str] | None] = {}
        for name, shard in weight_map.items():
            if Path(shard).name != shard:
                raise OmnifuseError(f"{folder / INDEX} names a shard outside the folder ({shard!r}); {HINT}")
            shards.setdefault(shard, []).append(name)
        return shards
    if (folder / WEIGHTS).is_file():
        return {WEIGHTS: None}
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    found = f" (it holds {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
    raise OmnifuseError(f"{folder} has neither {WEIGHTS} nor {INDEX}{found}; {HINT}")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files, each shard checked against the index."""
    state: dict[str, torch.Tensor] = {}
    for shard, names in _shards(folder).items():
        tensors = read_tensors(folder / shard, "weights shard", HINT)
        if names is not None and sorted(tensors) != sorted(names):
            raise OmnifuseError(
                f"{folder / shard} does not hold the tensors {INDEX} lists for it "
                f"({len(tensors)} found, {len(names)} listed); {HINT}"
            )
        state.update(tensors)
    return state


def load_weights_into(model: nn.Module, folder: Path) -> None:
    """Load the folder's weights into ``model`` (rebuilt from the folder's config), every name, shape
    and value checked; values are cast to the model's dtypes."""
    state = read_weights(folder)
    target = stored_state(model)
    exact_keys(state, target, f"{folder}")
    shapes = [
        f"{n} {tuple(v.shape)} ≠ {tuple(target[n].shape)}"
        for n, v in state.items()
        if v.shape != target[n].shape
    ]
    if shapes:
        raise OmnifuseError(f"{folder}: tensors of the wrong shape ({', '.join(shapes[:5])}); {HINT}")
    bad = [n for n, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise OmnifuseError(f"{folder}: {', '.join(bad[:5])} hold NaN or infinite values; {HINT}")
    with torch.no_grad():
        for name, value in state.items():
            target[name].copy_(value.to(target[name].dtype))
