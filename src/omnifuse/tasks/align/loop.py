"""One minibatch loop for every gradient-trained alignment method (dual encoders, deep CCA, DeViSE,
the cycle autoencoder): seeded shuffling, AdamW, the mean loss per epoch. The methods differ only in
the loss their module's ``forward`` computes on a batch of tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.progress import progress_bar
from omnifuse.runtime import Placement, placement_of

Loss = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


def _update(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:  # float16: an overflowing step is skipped by the scaler
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def fit(
    model: nn.Module,
    loss: Loss,
    tensors: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: bool = True,
    description: str = "align",
    placement: Placement | None = None,
) -> list[float]:
    """Train ``model``'s parameters on ``loss(batch)`` where ``batch`` holds the same rows of every
    tensor. Rows are reshuffled every epoch from ``seed``; a last partial batch is dropped (when there
    is more than one batch) because covariance- and batch-contrastive losses are poor on a few rows.
    ``on_epoch(epoch, mean_loss)`` is called after each epoch (logging, evaluation). Returns the mean
    loss per epoch.

    ``placement`` (default: where the model is): the tensors are copied to its device once, the order is
    drawn on the CPU from ``seed`` (the same on every device), each loss is computed under its autocast,
    and float16 steps go through its gradient scaler."""
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise OmnifuseError(f"paired tensors have different lengths: {[t.shape[0] for t in tensors]}")
    if n < 2:
        raise OmnifuseError(f"alignment training needs at least 2 pairs, got {n}")
    size = min(batch_size, n)
    batches = n // size
    placement = placement or placement_of(model)
    tensors = [t.to(placement.device) for t in tensors]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = placement.grad_scaler()
    gen = torch.Generator().manual_seed(seed)
    history = []
    with progress_bar(description, epochs, enabled=progress) as bar:
        for epoch in range(epochs):
            model.train()  # on_epoch may have evaluated
            order = torch.randperm(n, generator=gen, device=gen.device).to(placement.device)
            total = 0.0
            for k in range(batches):
                idx = order[k * size : (k + 1) * size]
                with placement.autocast():
                    value = loss(tuple(t[idx] for t in tensors))
                if not torch.isfinite(value):
                    raise OmnifuseError(
                        f"{description} epoch {epoch + 1} batch {k + 1}: the loss is not finite ({value.item()}; "
                        "training diverged); nothing was saved. Lower train.lr and train again"
                    )
                _update(opt, scaler, value)
                total += value.item()
            history.append(total / batches)
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
            bar.advance(1, loss=history[-1])
    model.eval()
    return history
