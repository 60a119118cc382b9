"""Structured pruning of the LLM's MLP channels: each decoder layer keeps the same number of its
intermediate channels, the most important ones on a calibration batch, as genuinely smaller
``nn.Linear`` layers (smaller matmuls, fewer parameters — not masks).

A channel ``j`` of a layer's MLP is produced by the rows ``j`` of its input projections (gate and up in
Llama's gated MLP) and read by the column ``j`` of its output projection (down). Its importance is
Wanda-sp's (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning", their Wanda baseline for
channels): ``Σ_i |W_down[i, j]| · ‖X_j‖₂``, the output weights' magnitude times the channel's activation
norm over the calibration tokens (padding excluded). Every layer keeps the same count, so the pruned LLM is
still a standard one (``config.intermediate_size`` is that count) that plain transformers loads after
export.

What a run keeps: the kept channel indices per MLP (``RUN/pruning.safetensors``), not the pruned weights —
the base LLM, these indices and the trained parameters rebuild the model (:func:`load_pruning`).

The MLPs are found by shape, not by name: in every decoder layer, the module whose linear children all
produce or read ``config.intermediate_size`` features, one of them reading (down) and the others producing
them — found on the unpruned model (a pruned width may equal the hidden size, where shapes alone are ambiguous). No library offers this for HF decoders (torch's
``nn.utils.prune`` masks weights and saves nothing); it is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.fusion import decoder_layers
from omnifuse.models.weights import read_tensors, save_tensors_atomic


@dataclass
class MLPBlock:
    path: str  # module path inside the model, e.g. llm.model.layers.0.mlp
    module: nn.Module
    inputs: list[str]  # its linear children that produce the intermediate channels (gate, up)
    output: str  # its linear child that reads them (down)

    def linear(self, name: str) -> nn.Linear:
        return getattr(self.module, name)


def _text_config(llm: nn.Module):
    return llm.config.get_text_config() if hasattr(llm.config, "get_text_config") else llm.config


def _intermediate_size(llm: nn.Module) -> int:
    size = getattr(_text_config(llm), "intermediate_size", None)
    if not isinstance(size, int):
        raise OmnifuseError(
            f"MLP pruning: {type(llm).__name__}'s config states no intermediate_size, so its MLPs cannot be "
            "found; prune a Hugging Face decoder such as Llama, Qwen2 or SmolLM"
        )
    return size


def _block_of(layer: nn.Module, prefix: str, size: int) -> MLPBlock | None:
    for name, module in layer.named_modules():
        children = dict(module.named_children())
        wrapped = [n for n, c in children.items() if hasattr(c, "base_layer")]  # PEFT's LoRA layers
        linears = {n: c for n, c in children.items() if isinstance(c, nn.Linear)}
        inputs = [n for n, c in linears.items() if c.out_features == size]
        outputs = [n for n, c in linears.items() if c.in_features == size]
        if any(size in (getattr(children[n].base_layer, "in_features", None),
                        getattr(children[n].base_layer, "out_features", None)) for n in wrapped):  # fmt: skip
            raise OmnifuseError(
                f"MLP pruning: {prefix}.{name} carries LoRA adapters on {', '.join(wrapped)}, whose shapes "
                "pruning would change; keep lora.target_modules on the attention (q_proj, k_proj, v_proj, "
                "o_proj) in a recipe that prunes"
            )
        if inputs and len(outputs) == 1 and len(inputs) + 1 == len(linears):
            return MLPBlock(f"{prefix}.{name}" if name else prefix, module, inputs, outputs[0])
    return None


def mlp_blocks(model: nn.Module) -> list[MLPBlock]:
    """Every decoder layer's MLP of ``model.llm`` (paths relative to ``model``), in layer order."""
    llm = model.llm
    size = _intermediate_size(llm)
    layers = decoder_layers(llm)
    prefix = "llm." + next(n for n, m in llm.named_modules() if m is layers)
    blocks = [_block_of(layer, f"{prefix}.{i}", size) for i, layer in enumerate(layers)]
    missing = [i for i, b in enumerate(blocks) if b is None]
    if missing:
        raise OmnifuseError(
            f"MLP pruning: decoder layers {missing[:5]} have no MLP of linear layers with {size} intermediate "
            "features (config.intermediate_size); this LLM's layout is not supported"
        )
    return blocks


@torch.no_grad()
def channel_scores(model: nn.Module, processor, samples: Sequence, batch_size: int = 8) -> list[torch.Tensor]:
    """Wanda-sp importance of every intermediate channel of every MLP (one ``[I]`` tensor per layer),
    from the activations of ``samples`` (training samples, run through the whole model)."""
    blocks = mlp_blocks(model)
    sq = [torch.zeros(b.linear(b.output).in_features, dtype=torch.float64) for b in blocks]
    real: dict[str, torch.Tensor] = {}

    def hook(i: int):
        def record(_module, args):
            x = args[0].float() * real["mask"][..., None]
            sq[i] += x.pow(2).sum(dim=(0, 1)).double().cpu()

        return record

    handles = [b.linear(b.output).register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = processor.collate([processor.encode(s) for s in samples[start : start + batch_size]])
            real["mask"] = batch.attention_mask.float()
            model(**batch.model_inputs())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [
        b.linear(b.output).weight.detach().abs().float().sum(dim=0).cpu() * s.sqrt().float()
        for b, s in zip(blocks, sq, strict=True)
    ]


def kept_channels(scores: Sequence[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Per layer, the indices (ascending) of its ``round(keep × I)`` highest-scoring channels."""
    count = max(1, round(keep * len(scores[0])))
    return [s.topk(count).indices.sort().values for s in scores]


def _sliced(old: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new, smaller linear layer holding ``old``'s rows (``dim`` 0) or columns (``dim`` 1) ``index``."""
    if not old.weight.is_floating_point():
        raise OmnifuseError(
            f"MLP pruning: the LLM's linear layers are stored as {old.weight.dtype} (quantised while loading); "
            "pruning slices float weights — load the pruned run without bitsandbytes (--quantize none or int8)"
        )
    index = index.to(old.weight.device)
    weight = old.weight.detach().index_select(dim, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    if old.bias is not None:
        bias = old.bias.detach().index_select(0, index) if dim == 0 else old.bias.detach()
        new.bias = nn.Parameter(bias.clone(), requires_grad=old.bias.requires_grad)
    return new


def prune_mlp(model: nn.Module, kept: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every MLP's linear layers by ones holding only the ``kept`` channels (one index tensor
    per layer, all of one length); returns the record to save ({MLP path: indices})."""
    blocks = mlp_blocks(model)
    _check_kept(kept, blocks)
    for block, index in zip(blocks, kept, strict=True):
        for name in block.inputs:
            setattr(block.module, name, _sliced(block.linear(name), index, 0))
        setattr(block.module, block.output, _sliced(block.linear(block.output), index, 1))
    _text_config(model.llm).intermediate_size = len(kept[0])
    return {b.path: k.to(torch.int64).cpu().contiguous() for b, k in zip(blocks, kept, strict=True)}


def _check_kept(kept: Sequence[torch.Tensor], blocks: list[MLPBlock], where: str = "MLP pruning") -> None:
    if len(kept) != len(blocks):
        raise OmnifuseError(f"{where}: {len(kept)} index lists for {len(blocks)} MLPs")
    size = blocks[0].linear(blocks[0].output).in_features
    counts = {len(k) for k in kept}
    for k in kept:
        bad = (
            k.dim() != 1 or k.dtype != torch.int64 or len(k) == 0 or int(k.min()) < 0 or int(k.max()) >= size
        )
        if bad or len(k.unique()) != len(k) or len(counts) != 1:
            raise OmnifuseError(
                f"{where}: the kept channel indices are not one list of distinct channels below {size} per "
                "layer, all of one length; the pruning record is damaged — train the run again"
            )


def save_pruning(record: dict[str, torch.Tensor], path: Path) -> None:
    save_tensors_atomic(record, path, metadata={"kind": "omnifuse mlp channels kept"})


def load_pruning(model: nn.Module, path: Path, expected: bool) -> bool:
    """Prune ``model`` as the run's record says (before LoRA and the trained weights load); False when
    the run has no record (it was never pruned). ``expected``: the recipe has a stage that prunes."""
    if not path.is_file():
        if expected:
            raise OmnifuseError(
                f"{path} is missing: a stage of this run pruned the LLM's MLP, and the kept channels are recorded "
                "there; the run directory is incomplete — copy the whole folder, or train it again"
            )
        return False
    record = read_tensors(path, "pruning record", "the run directory is damaged; train it again")
    blocks = mlp_blocks(model)
    missing = [b.path for b in blocks if b.path not in record]
    if missing or len(record) != len(blocks):
        raise OmnifuseError(
            f"{path}: the pruning record names other MLPs than this model has ({missing[:3] or list(record)[:3]}); "
            "it belongs to another recipe"
        )
    _check_kept([record[b.path] for b in blocks], blocks, str(path))
    prune_mlp(model, [record[b.path] for b in blocks])
    return True


def mlp_parameters(model: nn.Module) -> int:
    """Parameters of the LLM's MLPs (found by shape: call it before pruning, where intermediate and hidden
    sizes differ)."""
    return sum(p.numel() for b in mlp_blocks(model) for p in b.module.parameters())
