"""Evaluation manifests: everything that decides an evaluation's number, written beside the number.

``RUN/eval_manifest.json`` names the task, the data file and its hash, the subset (size, seed and a
hash of the chosen sample ids), a hash of the images those samples show, the prompt (chat template
hash, system prompt, one rendered example), the generation settings, how the model ran (the LLM's
quantisation, FastV token pruning), the evaluation batch size, a hash of the trained weights and the
library versions. ``omnifuse eval RUN --manifest FILE`` re-runs the
evaluation from it, refusing when the weights or data changed, so the same number comes back.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omnifuse import __version__
from omnifuse.atomic import sha256_file
from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import GenerationConfig
from omnifuse.processing import Processor

MANIFEST = "eval_manifest.json"
FORMAT = 1


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def media_hash(samples: list[Sample]) -> str:
    """One hash over the bytes of every image file the samples show, in order (decoded images: pixels)."""
    h = hashlib.sha256()
    for s in samples:
        for image in s.images():
            if isinstance(image, Path):
                h.update(sha256_file(image).encode())
            else:
                h.update(image.tobytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "omnifuse": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation is run with; a manifest stores these and a re-run takes them back."""

    data: str
    limit: int | None
    seed: int
    generation: GenerationConfig
    batch_size: int
    blind: bool
    # How the model ran: the LLM's quantisation (runtime.quantize / --quantize) and FastV's settings
    # (generation.fastv / --fastv-keep, None: off). None for quantize: a manifest from before they
    # were recorded (nothing to hold a re-run to).
    quantize: str | None = None
    fastv: dict[str, Any] | None = None


def build_manifest(
    settings: EvalSettings,
    data_file: Path,
    samples: list[Sample],
    processor: Processor,
    weights_file: Path,
    scores: dict[str, Any],
) -> dict[str, Any]:
    g = settings.generation
    example = processor.render(samples[0].prompt(), add_generation_prompt=True)[0] if samples else ""
    return {
        "format": FORMAT,
        "task": "vqa",
        "metric": "exact match after normalisation (VQA-style); several answers: the VQAv2 rule",
        "data": settings.data,
        "data_file": str(data_file),
        "data_sha256": sha256_file(data_file),
        "subset": {
            "limit": settings.limit,
            "seed": settings.seed,
            "n": len(samples),
            "ids_sha256": sha256_text("\n".join(s.id for s in samples)),
        },
        "media_sha256": media_hash(samples),
        "prompt": {
            "chat_template_sha256": sha256_text(processor.template),
            "system_prompt": processor.system_prompt,
            "example": example,
        },
        "generation": {
            "max_new_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "seed": g.seed,
        },
        "inference": {"quantize": settings.quantize, "fastv": settings.fastv},
        "batch_size": settings.batch_size,
        "blind": settings.blind,
        "weights_sha256": sha256_file(weights_file),
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "scores": scores,
    }


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OmnifuseError(
            f"no evaluation manifest at {path}; `omnifuse eval RUN` writes one to RUN/{MANIFEST}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OmnifuseError(f"{path} is not a JSON evaluation manifest ({e})") from None
    missing = [
        k
        for k in ("format", "data", "data_sha256", "subset", "generation", "batch_size", "weights_sha256")
        if not isinstance(manifest, dict) or k not in manifest
    ]
    if missing:
        raise OmnifuseError(f"{path} is not an omnifuse evaluation manifest: it lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise OmnifuseError(
            f"{path} has manifest format {manifest['format']}; this omnifuse reads format {FORMAT}"
        )
    return manifest


def settings_from(manifest: dict[str, Any]) -> EvalSettings:
    g = manifest["generation"]
    try:
        inference = manifest.get("inference") or {}
        return EvalSettings(
            data=str(manifest["data"]),
            limit=manifest["subset"]["limit"],
            seed=int(manifest["subset"]["seed"]),
            generation=GenerationConfig(
                int(g["max_new_tokens"]), float(g["temperature"]), float(g["top_p"]), seed=g.get("seed")
            ),
            batch_size=int(manifest["batch_size"]),
            blind=bool(manifest.get("blind", False)),
            quantize=inference.get("quantize"),
            fastv=inference.get("fastv"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise OmnifuseError(
            f"the evaluation manifest's settings are incomplete or malformed ({e!r})"
        ) from None


def check_inputs(
    manifest: dict[str, Any], data_file: Path, samples: list[Sample], weights_file: Path
) -> None:
    """Refuse a re-run whose inputs differ from the manifest's: the number could not come back."""
    problems = []
    if sha256_file(weights_file) != manifest["weights_sha256"]:
        problems.append(f"the trained weights ({weights_file}) differ from the ones evaluated")
    if sha256_file(data_file) != manifest["data_sha256"]:
        problems.append(f"the data file {data_file} changed since the evaluation")
    ids = sha256_text("\n".join(s.id for s in samples))
    if ids != manifest["subset"].get("ids_sha256"):
        problems.append("the seeded subset selects other samples")
    elif "media_sha256" in manifest and media_hash(samples) != manifest["media_sha256"]:
        problems.append("the images of the evaluated samples changed")
    if problems:
        raise OmnifuseError(
            "cannot reproduce this evaluation: "
            + "; ".join(problems)
            + ". Evaluate anew with `omnifuse eval RUN`"
        )


def version_drift(manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Library versions that differ from the manifest's: (then, now)."""
    now = _versions()
    then = manifest.get("versions", {})
    return {k: (then[k], now[k]) for k in now if k in then and then[k] != now[k]}
