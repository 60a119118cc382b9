"""The recipe's skeleton: the base every section is made of, and the closed vocabularies.

Every section of a recipe is a frozen pydantic model with ``extra="forbid"``, so an unknown key, a
wrong type or an unknown component name fails at load time with the key path and the allowed values
(see :func:`omnifuse.recipe.load.load_recipe`). The sections live beside this module, one module per
concern: ``components`` (encoders, connectors, fusion, LLM, and plugins named by dotted path),
``stages`` (stages and their objectives), and one module per kind of recipe (``generate``,
``classify``, ``align``). Nothing here imports torch: ``omnifuse validate`` checks a recipe without
loading a model.
"""

from __future__ import annotations

import difflib
import typing
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type accepts true/false (bool itself, Any, or a union / container holding one)."""
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in typing.get_args(annotation))
    return any(_admits_bool(a) for a in typing.get_args(annotation))


class Spec(BaseModel):
    # NaN and inf are refused in every float field: a NaN learning rate trains NaN weights.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads `steps: true` as 1 (and YAML's yes/no/on/off are booleans too).
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and not _admits_bool(field.annotation):
                    raise ValueError(
                        f"{key}: must be a number or text, not {str(value).lower()} (a YAML boolean)"
                    )
        return data


# Random seeds: what numpy's and Python's seeding accept on every platform.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed, 0 … 2**32 − 1")]


class Modality(str, Enum):
    """The kinds of input a sample carries. Recipes name encoders after them (``encoders: {image: …}``);
    a generative model reads media parts (image, audio, video), classifiers and alignment also read the text."""

    IMAGE = "image"
    AUDIO = "audio"
    TEXT = "text"
    VIDEO = "video"

    def __str__(self) -> str:
        return self.value


# Words people write for a modality, offered as "did you mean" (close spellings are found as well).
_SYNONYMS = {
    "photo": "image", "picture": "image", "img": "image", "vision": "image", "visual": "image",
    "pixels": "image", "speech": "audio", "voice": "audio", "sound": "audio", "wav": "audio",
    "clip": "audio", "spoken": "audio", "language": "text", "caption": "text", "words": "text",
    "movie": "video", "film": "video", "frames": "video", "mp4": "video",
}  # fmt: skip


def check_modality(name: str, allowed: tuple[Modality, ...], where: str) -> None:
    """Raise ``ValueError`` naming the allowed modalities (and the likely one) unless ``name`` is one."""
    values = [m.value for m in allowed]
    if name in values:
        return
    guess = _SYNONYMS.get(name.lower()) or next(
        iter(difflib.get_close_matches(name.lower(), values, 1)), None
    )
    hint = f"did you mean {guess!r}? " if guess in values else ""
    raise ValueError(
        f"{where}.{name}: {name!r} is not a modality omnifuse models read; {hint}name it after the sample "
        f"parts it reads: {' or '.join(values)}"
    )
