"""Frozen encoders' outputs kept on disk for the generative path (``runtime.feature_cache``).

While a stage keeps an encoder frozen (no parameter trains, eval mode), its output for an image depends only on
the encoder's weights, its preprocessing and the image: :meth:`MultimodalLM.encode` then asks this cache, by each
item's content hash (the processor puts it in ``Batch.media_keys``), and runs the encoder on the misses only. The
connector after it still trains on the cached features.

Keys, the classify recipes' scheme (:func:`omnifuse.models.features.cache_key`): a *space* per modality is the
hash of the encoder's spec (its preprocessing: image size, crop, normalisation, layer), a hash of its weights as
they are now (:func:`~omnifuse.models.features.module_weights_hash`: an encoder trained in an earlier stage gets
a new space), the preprocessed input's shape, the device type and the autocast dtype; inside a space an item is
its content hash (:func:`omnifuse.data.content.content_hash`). Changing any of them misses.

Storage: ``<root>/<space>/shard-*.safetensors``, one shard per batch of misses, written atomically
(:mod:`omnifuse.atomic`), the encoder's output dtype kept; each tensor's SHA-256 is in the shard's metadata and is
checked on every read. A shard whose header cannot be read or whose tensor does not match its checksum is
deleted and its items are encoded again (reported through ``log``), never used. Audio (variable length) and video
items carry no key and are encoded every time. One process only: under DDP / FSDP the cache is off (see
:func:`attach_feature_cache`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from omnifuse.models.features import cache_key, module_weights_hash, tensor_digest
from omnifuse.models.weights import save_tensors_atomic

FORMAT = "omnifuse-feature-cache/1"
_FORMAT_KEY = "__format__"


@dataclass
class _Space:
    """One (modality, encoder state, preprocessing) space: its folder and which shard holds each item."""

    folder: Path
    fingerprint: tuple
    index: dict[str, Path] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)


class FeatureCache:
    """``encode(modality, encoder, pixels, keys)`` → the frozen encoder's outputs ``[N, ...]`` on the
    pixels' device, read from ``root`` where present and stored where not. ``configs``: each modality's
    encoder spec as JSON (its preprocessing); ``log``: where damaged shards are reported."""

    def __init__(
        self, root: Path, configs: Mapping[str, dict], log: Callable[[str], None] | None = None
    ) -> None:
        self.root = Path(root)
        self.configs = dict(configs)
        self.log = log or (lambda _text: None)
        self._spaces: dict[str, _Space] = {}
        self.built = 0  # items encoded and stored by this process
        self.reused = 0  # items read back
        self.damaged = 0  # shards found damaged, deleted and rebuilt

    # ------------------------------------------------------------ the one entry point
    def encode(
        self, modality: str, encoder: nn.Module, pixels: torch.Tensor, keys: Sequence[str | None]
    ) -> torch.Tensor:
        if len(keys) != pixels.shape[0]:
            raise ValueError(f"{modality}: {len(keys)} cache keys for {pixels.shape[0]} items")
        space = self._space(modality, encoder, pixels)
        found = self._read(space, {k for k in keys if k is not None and k in space.index})
        miss = [i for i, k in enumerate(keys) if k not in found]
        hit = [i for i, k in enumerate(keys) if k in found]
        self.reused += len(hit)
        hits = (
            torch.stack([found[keys[i]] for i in hit]).to(pixels.device, non_blocking=True) if hit else None
        )
        if not miss:
            return hits
        with torch.no_grad():
            computed = encoder(pixels if not hit else pixels[miss])
        self._store(space, {keys[i]: computed[j] for j, i in enumerate(miss) if keys[i] is not None})
        if hits is None:
            return computed
        out = computed.new_empty((len(keys), *computed.shape[1:]))
        out[miss] = computed
        out[hit] = hits.to(computed.dtype)
        return out

    def fill(self, modality: str, encoder: nn.Module, pixels: torch.Tensor, keys: Sequence[str]) -> int:
        """Encode and store the items of ``keys`` not stored yet (nothing is read back); how many."""
        space = self._space(modality, encoder, pixels)
        miss = [i for i, k in enumerate(keys) if k not in space.index]
        if miss:
            with torch.no_grad():
                computed = encoder(pixels[miss])
            self._store(space, {keys[i]: computed[j] for j, i in enumerate(miss)})
        return len(miss)

    # ------------------------------------------------------------ spaces
    def _space(self, modality: str, encoder: nn.Module, pixels: torch.Tensor) -> _Space:
        device = pixels.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        # The weights' storage, in-place version counters (an optimizer step or load_state_dict bumps them)
        # and the floating tensors' sums (a write through ``.data`` bumps no counter): while they are unchanged,
        # the full weights hash computed last time still holds. Plain sums: ~1.5 ms for MobileNetV2's 314
        # tensors on one CPU thread, where ``sum(dtype=float64)`` took ~100 ms.
        state = [t.detach() for t in (*encoder.parameters(), *encoder.buffers())]
        floats = [t for t in state if t.is_floating_point()]
        with torch.no_grad():
            sums = torch.stack([t.sum().to(torch.float32) for t in floats]).tolist() if floats else []
        fingerprint = (
            device,
            autocast,
            tuple(pixels.shape[1:]),
            *((t.data_ptr(), t._version) for t in state),
        )
        fingerprint += tuple(sums)
        space = self._spaces.get(modality)
        if space is not None and space.fingerprint == fingerprint:
            return space
        extra = {"device": device, "autocast": str(autocast), "input_shape": list(pixels.shape[1:])}
        name = cache_key(
            self.configs.get(modality, {}), "encoder-output", module_weights_hash(encoder), [], extra=extra
        )
        space = _Space(self.root / name[:32], fingerprint)
        self._scan(space)
        self._spaces[modality] = space
        return space

    def _scan(self, space: _Space) -> None:
        """Index the space's shards by their headers; a shard whose header is unreadable is dropped."""
        for shard in sorted(space.folder.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), "pt") as f:
                    meta, names = f.metadata() or {}, list(f.keys())
                if meta.get(_FORMAT_KEY) != FORMAT or any(n not in meta for n in names):
                    raise ValueError("not a feature-cache shard")
            except Exception as exc:  # safetensors raises several types for a damaged header
                self._drop(space, shard, f"{type(exc).__name__}: {exc}")
                continue
            for n in names:
                space.index[n], space.checksums[n] = shard, meta[n]

    def _read(self, space: _Space, keys: set[str]) -> dict[str, torch.Tensor]:
        """The stored tensors of ``keys``, each checked against its checksum; a damaged shard is dropped
        and its items left out (the caller encodes them again)."""
        by_shard: dict[Path, list[str]] = {}
        for k in keys:
            by_shard.setdefault(space.index[k], []).append(k)
        found: dict[str, torch.Tensor] = {}
        for shard, names in by_shard.items():
            try:
                with safe_open(str(shard), "pt") as f:
                    tensors = {n: f.get_tensor(n) for n in names}
                bad = [n for n, t in tensors.items() if tensor_digest(t) != space.checksums[n]]
                if bad:
                    raise ValueError(f"{len(bad)} tensor(s) do not match their checksum")
            except Exception as exc:
                self._drop(space, shard, f"{type(exc).__name__}: {exc}")
                continue
            found |= tensors
        return found

    def _store(self, space: _Space, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        # Own CPU copies (rows of one batch share storage, which safetensors refuses), in the output dtype.
        stored = {k: t.detach().to("cpu", copy=True).contiguous() for k, t in tensors.items()}
        meta = {k: tensor_digest(t) for k, t in stored.items()} | {_FORMAT_KEY: FORMAT}
        shard = space.folder / f"shard-{secrets.token_hex(8)}.safetensors"
        save_tensors_atomic(stored, shard, meta)
        for k in stored:
            space.index[k], space.checksums[k] = shard, meta[k]
        self.built += len(stored)

    def _drop(self, space: _Space, shard: Path, why: str) -> None:
        self.damaged += 1
        self.log(f"feature cache: {shard} is damaged ({why}); deleted, its items will be encoded again")
        shard.unlink(missing_ok=True)
        for k in [k for k, s in space.index.items() if s == shard]:
            del space.index[k], space.checksums[k]

    # ------------------------------------------------------------ reporting
    def size_bytes(self) -> int:
        return (
            sum(p.stat().st_size for p in self.root.glob("*/shard-*.safetensors"))
            if self.root.is_dir()
            else 0
        )

    def items(self) -> int:
        return sum(len(s.index) for s in self._spaces.values())

    def describe(self) -> str:
        """One line for the training output: what the cache holds and what this run did with it."""
        line = (
            f"feature cache: {self.size_bytes() / 1e6:,.1f} MB in {self.root} — {self.built:,} item(s) encoded "
            f"and stored, {self.reused:,} read back"
        )
        return line + (f", {self.damaged} damaged shard(s) rebuilt" if self.damaged else "")


def frozen(encoder: nn.Module) -> bool:
    """Whether the cache stands in for ``encoder``: no parameter trains and it is in eval mode (dropout and
    batch-norm statistics fixed). MultimodalLM.encode asks the same."""
    return not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def attach_feature_cache(
    model: nn.Module,
    processor,
    setting: str,
    root: Path,
    specs: Mapping[str, object],
    processes: int = 1,
    log: Callable[[str], None] | None = None,
) -> FeatureCache | None:
    """Give ``model`` (a MultimodalLM) a feature cache under ``root`` and have ``processor`` hash its media
    items, for ``setting`` ``auto`` (``specs``: the recipe's encoder specs, pydantic); ``off`` (or several processes) detaches it. The model itself uses the
    cache only for an encoder that is frozen and in eval mode, so a stage training an encoder (LoRA or full)
    encodes as usual, and its trained weights give later stages a new space."""
    model.feature_cache, processor.content_keys = None, False
    if setting == "off":
        return None
    if processes > 1:
        if log is not None:
            log(
                f"runtime.feature_cache: off with {processes} processes (each would write its own shards); "
                "frozen encoders run on every step"
            )
        return None
    configs = {m: spec.model_dump(mode="json") for m, spec in specs.items()}  # each encoder's preprocessing
    model.feature_cache, processor.content_keys = FeatureCache(root, configs, log), True
    return model.feature_cache


__all__ = ["FORMAT", "FeatureCache", "attach_feature_cache", "frozen"]
