"""The model card (README.md with Hugging Face hub front-matter) of an exported folder: the recipe, the
parts and their licences, the training stages, the evaluation with its 95 % CIs and the eval manifest's
hash, the intended use, how to load it, and the command that produced it."""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from omnifuse import __version__
from omnifuse.assets import get_asset
from omnifuse.atomic import sha256_file
from omnifuse.export.common import Loaded
from omnifuse.untrusted import read_json, read_text

PIPELINE = {"llm": "text-generation"}  # everything else answers about media in text
HOLDS = {
    "llm": "This folder holds the language model only (text in, text out); the media parts stay in the run."
}


def _licence(source: str | None) -> str:
    """The licence of a named part: a packaged asset's own, a local folder's card front-matter, else
    unknown (a hub id or a folder without a card)."""
    if source is None:
        return "—"
    asset = get_asset(source)
    if asset is not None:
        return asset.licence
    card = Path(source).expanduser() / "README.md"
    if card.is_file():
        text = read_text(card, "model card")
        if text.startswith("---"):
            front = yaml.safe_load(text.split("---", 2)[1]) or {}
            if isinstance(front, dict) and isinstance(front.get("license"), str):
                return front["license"]
    return "unknown (see the part's source)"


def _source(spec) -> str | None:
    for field in ("weights", "name", "text_model"):
        value = getattr(spec, field, None)
        if isinstance(value, str):
            return value
    return None


def _count(module: nn.Module | None) -> str:
    return "—" if module is None else f"{sum(p.numel() for p in module.parameters()):,}"


def _parts(loaded: Loaded) -> list[str]:
    spec, model = loaded.recipe.model, loaded.model
    rows = ["| part | kind | weights from | licence | parameters |", "|---|---|---|---|---|"]
    for m, enc in spec.encoders.items():
        src = _source(enc)
        rows.append(
            f"| encoders.{m} | {enc.type} | {src or 'random init'} | {_licence(src)} | {_count(model.encoders[m])} |"
        )
    for m, conn in spec.connectors.items():
        src = _source(conn) if conn.type == "qformer" else None
        rows.append(
            f"| connectors.{m} | {conn.type} | {src or 'trained here'} | {_licence(src)} | "
            f"{_count(model.connectors[m])} |"
        )
    if model.fusion is not None:
        rows.append(f"| fusion | {spec.fusion.type} | trained here | — | {_count(model.fusion)} |")
    rows.append(f"| llm | causal LM | {spec.llm.name} | {_licence(spec.llm.name)} | {_count(model.llm)} |")
    return rows


def _stages(loaded: Loaded) -> list[str]:
    rows = ["| stage | trains | learning rates | steps | batch |", "|---|---|---|---|---|"]
    for s in loaded.recipe.stages:
        trains = ", ".join(f"{c}: {m}" for c, m in s.trainable.items()) or "—"
        lrs = ", ".join(f"{c}: {v:g}" for c, v in s.lr.items()) or "—"
        steps = s.steps if s.steps is not None else f"{s.epochs:g} epochs"
        rows.append(f"| {s.name} | {trains} | {lrs} | {steps} | {s.batch_size} × {s.grad_accum} |")
    lora = "merged into the base weights" if loaded.lora_merged else "kept as separate adapters"
    if loaded.recipe.lora_components():
        rows.append(f"\nLoRA (r={loaded.recipe.lora.r}, alpha={loaded.recipe.lora.alpha}): {lora}.")
    return rows


def _ci(entry: dict) -> str:
    ci = entry.get("ci95")
    band = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"{100 * entry['accuracy']:.1f} %{band}"


def _evaluation(loaded: Loaded) -> list[str]:
    path = loaded.run.path / "eval.json"
    if not path.is_file():
        return ["Not evaluated: run `omnifuse eval RUN_DIR` before exporting to include the scores."]
    result = read_json(path, "evaluation")
    rows = [
        f"On `{result.get('data')}` ({result.get('n')} questions), accuracy with 95 % CI:",
        "",
        "| questions | n | accuracy [95 % CI] |",
        "|---|---|---|",
        f"| all | {result.get('n')} | {_ci(result)} |",
    ]
    for kind, entry in sorted((result.get("per_type") or {}).items()):
        rows.append(f"| {kind} | {entry.get('n')} | {_ci(entry)} |")
    blind = result.get("blind")
    if isinstance(blind, dict):
        rows.append(f"| all, without the media (blind) | {blind.get('n')} | {_ci(blind)} |")
    manifest = loaded.run.path / "eval_manifest.json"
    if manifest.is_file():
        rows.append(f"\nEval manifest sha256: `{sha256_file(manifest)}` (`eval_manifest.json` of the run).")
    return rows


def model_card(loaded: Loaded, fmt: str, snippet: str, command: str) -> str:
    recipe = loaded.recipe
    front = {
        "library_name": "transformers",
        "pipeline_tag": PIPELINE.get(fmt, "image-text-to-text"),
        "tags": ["omnifuse", recipe.name, f"omnifuse-{fmt}"],
        "license": _licence(recipe.model.llm.name).split(" ")[0],
    }
    if get_asset(recipe.model.llm.name) is not None:
        front["base_model"] = get_asset(recipe.model.llm.name).aliases[:1] or [recipe.model.llm.name]
    recipe_yaml = read_text(loaded.run.recipe_file, "run recipe").strip()
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# {recipe.name}",
        "",
        f"Exported by omnifuse {__version__} in the `{fmt}` format with:",
        "",
        f"```\n{command}\n```",
        "",
        "## Parts",
        HOLDS.get(fmt, "This folder holds every part below, frozen ones included."),
        "",
        *_parts(loaded),
        "",
        "## Training stages",
        *_stages(loaded),
        "",
        "## Evaluation",
        *_evaluation(loaded),
        "",
        "## Intended use",
        "Research and comparison of multimodal fusion on the data it was trained on "
        f"(`{recipe.data.train}`). It answers short questions about its inputs; it was not tested "
        "for other data, for safety or for bias, and should not decide anything about people.",
        "",
        "## Loading",
        snippet.strip(),
        "",
        "## Recipe",
        f"```yaml\n{recipe_yaml}\n```",
        "",
    ]
    return "\n".join(lines)
