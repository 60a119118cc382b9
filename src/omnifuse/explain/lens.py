"""The logit lens (nostalgebraist, 2020): read every decoder layer's hidden state through the model's
own output head (final norm + LM head), as if the network stopped there.

At the position predicting an answer token, the lens shows from which layer on the answer is the
model's top guess. The last layer's lens is exactly the model's output distribution: the model
applies the same norm and head to the same hidden state (the hidden states are taken by forward
hooks on the decoder layers, before the final norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.runtime import placement_of


@dataclass
class LensLayer:
    layer: int
    prob: list[float]  # per answer token: its probability under this layer's lens
    rank: list[int]  # per answer token: 1 = the lens's top token
    top_token: list[str]  # per answer token position: the lens's most likely token
    top_prob: list[float]


@dataclass
class LensResult:
    layers: list[LensLayer]
    last_logits: torch.Tensor = field(repr=False)  # [answer tokens, V]: the last layer's lens logits

    def first_layer_top(self) -> int | None:
        """The first layer from which the first answer token is the lens's top token to the end."""
        first = None
        for entry in self.layers:
            if entry.rank[0] == 1:
                first = entry.layer if first is None else first
            else:
                first = None
        return first

    def to_json(self) -> dict:
        return {
            "first_layer_answer_on_top": self.first_layer_top(),
            "layers": [
                {
                    "layer": e.layer,
                    "answer_prob": e.prob,
                    "answer_rank": e.rank,
                    "top_token": e.top_token,
                    "top_prob": e.top_prob,
                }  # fmt: skip
                for e in self.layers
            ],
        }


def output_head(llm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(final norm, LM head) of a Hugging Face causal LM."""
    norm = getattr(llm.get_decoder(), "norm", None) if hasattr(llm, "get_decoder") else None
    head = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    if not isinstance(norm, nn.Module) or not isinstance(head, nn.Module):
        raise OmnifuseError(
            f"the logit lens needs the final norm and LM head of {type(llm).__name__} "
            "(llm.get_decoder().norm and llm.get_output_embeddings())"
        )
    return norm, head


@torch.no_grad()
def logit_lens(
    llm: nn.Module,
    layer_outputs: Sequence[torch.Tensor],
    positions: Sequence[int],
    target_ids: Sequence[int],
    tokenizer,
) -> LensResult:
    """Lens over ``layer_outputs`` (each [T, D], the full sequence) at ``positions`` for ``target_ids``.

    Norm and head run on the whole sequence, in the shape the model itself uses, so that the last
    layer's lens reproduces the model's logits bit for bit; only then are the positions selected."""
    norm, head = output_head(llm)
    placement = placement_of(llm)
    device = layer_outputs[0].device if layer_outputs else placement.device
    rows = torch.tensor(list(positions), dtype=torch.long, device=device)
    targets = torch.tensor(list(target_ids), dtype=torch.long, device=device)
    entries = []
    logits = None
    for i, hidden in enumerate(layer_outputs):
        with placement.autocast():
            logits = head(norm(hidden[None]))[0][rows].float()  # [n, V]
        probs = torch.softmax(logits, dim=-1)
        p = probs[torch.arange(len(targets), device=device), targets]
        rank = (probs > p[:, None]).sum(dim=-1) + 1
        top_p, top = probs.max(dim=-1)
        entries.append(
            LensLayer(i, p.tolist(), rank.tolist(), [tokenizer.decode([int(t)]) for t in top], top_p.tolist())
        )
    if logits is None:
        raise OmnifuseError("the LLM has no decoder layers to read")
    return LensResult(entries, logits)
