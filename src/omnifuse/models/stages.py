"""Stages as data: one function applies a stage (what is frozen, LoRA or fully trained, at which lr).

It sits with the models, below training: a stage speaks of a model's parts, and the run report and the run
reload read which parameters the stages train without importing the training loop.

The stage spec is interpreted here and only here. LoRA adapters come from PEFT
(``inject_adapter_in_model``) and, once injected into a component, stay for the rest of the run (a later
stage may freeze them); their parameters carry PEFT's ``lora_`` prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.llm.grounding_tokens import is_added_rows
from omnifuse.recipe import LoRASpec, StageSpec


def _is_lora_param(name: str) -> bool:
    # PEFT's own convention for its adapter parameters (peft.tuners.lora: `"lora_" in n`).
    return "lora_" in name


def add_lora(module: nn.Module, spec: LoRASpec, component: str) -> None:
    """Inject LoRA adapters into ``module`` once (no-op when already present)."""
    if any(_is_lora_param(n) for n, _ in module.named_parameters()):
        return
    targets = {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    wanted = [t for t in spec.target_modules if t in targets]
    if not wanted:
        raise OmnifuseError(
            f"LoRA for {component}: none of lora.target_modules {list(spec.target_modules)} is a linear layer "
            f"of this component (it has: {', '.join(sorted(targets))})"
        )
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=wanted)
    inject_adapter_in_model(config, module)


def unload_lora(model: nn.Module, merge: bool = True) -> int:
    """Put the plain base layer back in the place of every LoRA layer, first folding the adapter into it
    (W + B·A·alpha/r, PEFT's own ``merge(safe_merge=True)``, which refuses NaNs) when ``merge``; without
    ``merge`` the adapters are dropped. The model then has its original parameter names and no ``lora_``
    parameters. Returns how many layers were unloaded. PEFT's ``merge_and_unload`` needs a
    ``PeftModel``; adapters here are injected into parts of a composite, so its two steps are done over
    the composite's modules."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in layers:
        if merge:
            module.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return len(layers)


def prepare_lora(model: nn.Module, components: list[str], spec: LoRASpec) -> None:
    """Inject adapters for every component that some stage trains with LoRA (before loading weights)."""
    for comp in components:
        add_lora(model.get_submodule(comp), spec, comp)


@dataclass
class ParamGroupInfo:
    component: str
    mode: str
    lr: float
    trainable: int
    total: int
    dtypes: str = ""  # storage dtypes of the trained / the frozen parameters (mixed precision)


def select_parameters(
    model: nn.Module, stage: StageSpec
) -> list[tuple[str, str, list[tuple[str, nn.Parameter]], int]]:
    """(component, mode, [(full name, parameter) it trains], total parameter count) per component.

    More specific components win: with ``encoders: full`` and ``encoders.image: frozen`` the image
    encoder stays frozen. LoRA components train only their adapter parameters (and an LLM's added
    grounding-token rows, :mod:`omnifuse.llm.grounding_tokens`).
    """
    order = sorted(stage.trainable.items(), key=lambda kv: -kv[0].count("."))
    claimed: set[int] = set()
    out = []
    for comp, mode in order:
        module = model.get_submodule(comp)
        chosen = []
        for name, p in module.named_parameters():
            if id(p) in claimed:
                continue
            claimed.add(id(p))
            if mode == "full" or (mode == "lora" and (_is_lora_param(name) or is_added_rows(name))):
                chosen.append((f"{comp}.{name}", p))
        out.append((comp, mode, chosen, sum(p.numel() for p in module.parameters())))
    return out


def changed_parameters(model: nn.Module, stages: Sequence[StageSpec]) -> list[str]:
    """Names of the parameters any of ``stages`` trains: what a run directory must store."""
    names: dict[str, None] = {}
    for stage in stages:
        for _, _, chosen, _ in select_parameters(model, stage):
            names.update((n, None) for n, _ in chosen)
    return list(names)


def apply_stage(
    model: nn.Module, stage: StageSpec, lora: LoRASpec, console: Console | None = None
) -> list[dict]:
    """Freeze everything, then make trainable what the stage says. Returns AdamW parameter groups."""
    for comp, mode in stage.trainable.items():
        if mode == "lora":
            add_lora(model.get_submodule(comp), lora, comp)
    for p in model.parameters():
        p.requires_grad_(False)
    groups, infos = [], []
    for comp, mode, chosen, total in select_parameters(model, stage):
        for _, p in chosen:
            p.requires_grad_(True)
        lr = stage.lr.get(comp, 0.0)
        stored = _storage(model, comp, chosen)
        infos.append(ParamGroupInfo(comp, mode, lr, sum(p.numel() for _, p in chosen), total, stored))
        if chosen:
            groups.append({"params": [p for _, p in chosen], "lr": lr, "name": comp})
    if console is not None:
        console.print(_stage_table(model, stage, infos))
    if not groups:
        raise OmnifuseError(f"stage {stage.name!r} trains no parameters; check its trainable section")
    return groups


def _storage(model: nn.Module, comp: str, chosen: list[tuple[str, nn.Parameter]]) -> str:
    """'trained float32 · frozen bfloat16': where a component's master weights and frozen weights live."""
    trained = [p for _, p in chosen]
    ids = {id(p) for p in trained}
    frozen = [p for p in model.get_submodule(comp).parameters() if id(p) not in ids]
    names = {
        label: "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in params}))
        for label, params in (("trained", trained), ("frozen", frozen))
        if params
    }
    if len(set(names.values())) == 1:  # one dtype for all (float32 without mixed precision)
        return next(iter(names.values()))
    return " · ".join(f"{label} {dtypes}" for label, dtypes in names.items())


def _stage_table(model: nn.Module, stage: StageSpec, infos: list[ParamGroupInfo]) -> Table:
    table = Table(title=f"stage {stage.name}")
    for col in ("component", "mode", "lr", "trainable", "total", "stored in"):
        table.add_column(col, justify="right" if col in ("lr", "trainable", "total") else "left")
    for i in infos:
        label = escape("[Frozen]" if i.mode == "frozen" else f"[TRAINABLE] {i.mode}")
        table.add_row(i.component, label, f"{i.lr:g}", f"{i.trainable:,}", f"{i.total:,}", i.dtypes)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    table.caption = f"trainable {n_train:,} of {n_all:,} parameters ({100 * n_train / n_all:.2f} %)"
    return table
