"""The contracts of the parts a model is built from, written as ``typing.Protocol``s.

A part is anything with these members — omnifuse's own classes and a user's plugin alike (see
docs/extending.md); nothing inherits from these classes. ``MultimodalLM``, the processor and the builders
call the members directly, so a part that lacks one fails when it is built (``check_component``), not
half-way through training. This module imports nothing at run time beyond ``typing``: the recipe layer
uses it to check a plugin named by dotted path without importing torch itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image

Grid = tuple[int, int]


@runtime_checkable
class Encoder(Protocol):
    """Media → features ``[B, T, D]``.

    ``output_dim`` is D; ``num_tokens()`` is T for one item at the encoder's input size (variable-length
    encoders, audio, take the item's length in frames: ``num_tokens(length)``); ``token_grid()`` is
    (rows, cols) when the T tokens are a row-major grid over the input image, else None; ``preprocess``
    is the encoder's own transform of one item (a PIL image for images, a waveform for audio) into the
    tensor ``forward`` reads. Variable-length encoders take and return ``(features, lengths)``."""

    output_dim: int

    def num_tokens(self, *length: int) -> int: ...

    def token_grid(self) -> Grid | None: ...

    def preprocess(self, item: Image.Image | Any) -> torch.Tensor: ...

    def forward(self, pixel_values: torch.Tensor, *lengths: torch.Tensor) -> Any: ...


@runtime_checkable
class ImageEncoder(Encoder, Protocol):
    """An encoder of images at a fixed square input size: the default tile size when tiling, and the
    region of the original image its input keeps (for attribution maps)."""

    image_size: int

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]: ...


@runtime_checkable
class Connector(Protocol):
    """Encoder features ``[B, P, D_enc]`` → LLM-width tokens ``[B, T, D_llm]``.

    Built as ``Connector(in_dim, out_dim, **options)``. ``num_output_tokens(P)`` is T (the processor
    asks it, never guesses); ``output_grid(input_grid)`` is the (rows, cols) of the output tokens for an
    input grid, or None when they are no grid (pooled, learned queries)."""

    def num_output_tokens(self, num_input_tokens: int) -> int: ...

    def output_grid(self, input_grid: Grid | None) -> Grid | None: ...

    def forward(self, features: torch.Tensor, *lengths: torch.Tensor) -> Any: ...


@runtime_checkable
class Fusion(Protocol):
    """Intermediate fusion into the LLM (Flamingo's gated cross-attention): built as
    ``Fusion(llm, d_llm, **options)``, it attaches itself to the LLM's decoder; ``bind(features, mask)``
    is a context manager that holds one batch's media ``[B, M, D_llm]`` (mask ``[B, M]``) while the LLM
    runs. Early fusion has no module (the placeholders in the text are replaced)."""

    def bind(self, features: torch.Tensor, mask: torch.Tensor) -> Any: ...

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class ClassicFusion(Protocol):
    """Fusion of a classifier (omnifuse.fusion.classic): the per-modality vectors (or votes) and a
    ``[B, M]`` presence mask → ``[B, out_dim]``; ``decision`` is True when the inputs are the modalities'
    own class logits (decision level) and the output is already the prediction."""

    out_dim: int
    decision: bool

    def forward(self, h: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor: ...


# What a recipe section of each kind builds, for plugins named by dotted path or entry point.
PROTOCOLS: dict[str, type] = {"encoder": Encoder, "connector": Connector, "fusion": Fusion}


def protocol_methods(protocol: type) -> list[str]:
    """The methods a class must define to satisfy ``protocol`` (data members are set per instance, so
    they are checked on the built object, by ``isinstance``)."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        names += [n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")]
    return sorted(set(names))


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` (a class or a built part) lacks."""
    members = protocol_methods(protocol)
    if not isinstance(obj, type):
        for klass in protocol.__mro__:
            if getattr(klass, "_is_protocol", False):
                members += [n for n in vars(klass).get("__annotations__", {}) if n not in members]
    return [m for m in members if not hasattr(obj, m)]
