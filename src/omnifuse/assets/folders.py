"""Model folders a user points a recipe at (an LLM, a vision tower, a text model, a Whisper), checked before
Hugging Face loads them, and loaded so that whatever goes wrong becomes one clear error.

Pickled weights (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) can run code when unpickled; torch's
``weights_only`` default stops most of that, but omnifuse does not lean on it: a folder holding only pickled
weights is refused, with the command that converts it, unless the user opts in with
``OMNIFUSE_ALLOW_PICKLE=1`` (for folders they trust). Without the opt-in every ``from_pretrained`` is told
``use_safetensors=True``, so a Hugging Face id never falls back to a pickle either.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_safetensors, read_json

PICKLE_ENV = "OMNIFUSE_ALLOW_PICKLE"
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
T = TypeVar("T")


def pickle_allowed() -> bool:
    return os.environ.get(PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def pretrained_kwargs() -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for model weights: safetensors only, unless opted in."""
    return {} if pickle_allowed() else {"use_safetensors": True}


def convert_hint(folder: Path | str, loader: str = "AutoModelForCausalLM") -> str:
    return (
        f'convert it once, in an environment you trust: `python -c "from transformers import {loader} as M; '
        f"M.from_pretrained('{folder}').save_pretrained('{folder}', safe_serialization=True)\"` "
        f"(or set {PICKLE_ENV}=1 to load pickled weights from folders you trust)"
    )


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a path (a Hugging Face id is ``name`` or ``namespace/name``)."""
    return (
        Path(name).is_absolute()
        or name.startswith(("./", "../", "~", ".\\"))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith("/")
    )


def check_local(name: str, what: str) -> None:
    """A reference that names a path must name an existing folder; a hub id is left to Hugging Face."""
    path = Path(name).expanduser()
    if path.is_file():
        raise OmnifuseError(
            f"the {what} {name!r} is a file; give the folder that holds config.json and the weights"
        )
    if not path.exists() and looks_like_path(name):
        raise OmnifuseError(
            f"the {what} folder {name!r} does not exist; check the path (relative to {Path.cwd()})"
        )


def check_model_folder(folder: Path | str, what: str, loader: str = "AutoModelForCausalLM") -> None:
    """A local Hugging Face model folder: not empty, a readable config.json, weights present, safetensors
    intact, pickled weights refused unless opted in."""
    folder = Path(folder)
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise OmnifuseError(f"the {what} folder {folder} cannot be read ({exc.strerror or exc})") from None
    if not entries:
        raise OmnifuseError(
            f"the {what} folder {folder} is empty; it needs config.json and the weights (*.safetensors), as "
            "written by `save_pretrained`"
        )
    config = folder / "config.json"
    if not config.exists():
        raise OmnifuseError(
            f"the {what} folder {folder} has no config.json, so it is not a Hugging Face model folder; save "
            "the model with `save_pretrained(DIR)`, which writes config.json beside the weights"
        )
    if not isinstance(read_json(config, f"{what} config"), dict):
        raise OmnifuseError(f"{what} config {config} must hold a JSON object; the folder is damaged")
    safetensors = sorted(p for p in entries if p.suffix == ".safetensors")
    for file in safetensors:
        check_safetensors(file, f"{what} weights file")
    if safetensors or pickle_allowed():
        return
    pickled = sorted(p.name for p in entries if p.suffix in PICKLED)
    if pickled:
        raise OmnifuseError(
            f"the {what} folder {folder} holds only pickled weights ({', '.join(pickled[:3])}), which can run "
            f"code when loaded, so omnifuse does not load them; {convert_hint(folder, loader)}"
        )
    raise OmnifuseError(
        f"the {what} folder {folder} holds no weights (no *.safetensors file); save the model with "
        "`save_pretrained(DIR)` into it"
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # Hugging Face's messages run over several lines
    text = text if len(text) <= 300 else f"{text[:297]}..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_pretrained(load: Callable[[], T], what: str, name: str, path: str, hint: str) -> T:
    """``load()`` (a ``from_pretrained`` call on ``path``), whatever it raises for a folder or id the user
    gave (a config with wrong values, a damaged tokenizer file, weights of another shape) turned into
    one paragraph naming the model and what to use instead."""
    try:
        return load()
    except OmnifuseError:
        raise
    except Exception as exc:  # a user's model folder can make transformers raise nearly anything
        where = repr(name) if str(path) == name else f"{name!r} (resolved to {path})"
        raise OmnifuseError(f"could not load the {what} {where}: {_reason(exc)}. {hint}") from None
