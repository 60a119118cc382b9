"""Resolve a data reference from a recipe or the CLI: a JSONL path or a built-in data set ``name:split``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omnifuse.assets import cache_dir
from omnifuse.data.av_digits import ensure_av_digits
from omnifuse.data.captions import ensure_easy_vqa_captions
from omnifuse.data.easy_vqa import ensure_easy_vqa
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.moving_shapes import ensure_moving_shapes
from omnifuse.data.sample import Sample
from omnifuse.data.shapes_grounding import ensure_shapes_grounding
from omnifuse.data.shapes_rerendered import ensure_shapes_rerendered
from omnifuse.data.spoken_easy_vqa import ensure_spoken_easy_vqa
from omnifuse.errors import OmnifuseError

# name → function(cache_root) returning {split: jsonl path}; exported once into the cache.
BUILTIN: dict[str, Callable[[Path], dict[str, Path]]] = {
    "easy-vqa": ensure_easy_vqa,
    "easy-vqa-captions": ensure_easy_vqa_captions,  # image–caption pairs for Q-Former stage 1
    "spoken-easy-vqa": ensure_spoken_easy_vqa,  # the questions as speech (espeak-ng), held-out test voices
    "av-digits": ensure_av_digits,  # digit images + spoken digits (classic fusion, alignment)
    "moving-shapes": ensure_moving_shapes,  # short clips, questions over time and sound (docs/video.md)
    "shapes-grounding": ensure_shapes_grounding,  # shape scenes with Qwen-VL boxes (docs/grounding.md)
    # easy-vqa's questions over shapes drawn differently (a generalisation check; docs/experiments.md)
    "shapes-rerendered": ensure_shapes_rerendered,
}


def resolve_data_path(ref: str) -> Path:
    path = Path(ref)
    if path.suffix == ".jsonl" or path.exists():
        return path
    name, sep, split = ref.partition(":")
    if sep and name in BUILTIN:
        files = BUILTIN[name](cache_dir())
        if split not in files:
            raise OmnifuseError(f"data set {name} has no split {split!r}; splits: {', '.join(sorted(files))}")
        return files[split]
    raise OmnifuseError(
        f"data {ref!r} is neither a JSONL file nor a built-in data set; use a path to a .jsonl file in the "
        f"native format or one of: {', '.join(f'{n}:<split>' for n in BUILTIN)}"
    )


def load_data(ref: str) -> list[Sample]:
    return load_jsonl(resolve_data_path(ref))
