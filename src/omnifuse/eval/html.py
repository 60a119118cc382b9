"""``omnifuse report RUN``: one self-contained HTML page per run (images embedded as data URLs).

The page shows the resolved recipe, the stage table (per component: frozen / LoRA / full and parameter
counts), the loss and evaluation curves, the scores with their 95 % intervals, the robustness table,
sample predictions with their images and, when asked, explanation heatmaps. It is rendered with
Jinja2 with autoescaping on: text from data files and model answers can never become markup.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from omnifuse import __version__
from omnifuse.atomic import atomic_write_text
from omnifuse.data.sample import Sample
from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.eval.captioning import caption_table
from omnifuse.eval.report import plot_loss
from omnifuse.eval.runfiles import (
    EVALUATION,
    MANIFEST,
    PREDICTION,
    ROBUSTNESS,
    STEP,
    read_document,
    read_optional,
    read_records,
)
from omnifuse.eval.stage_eval import FILE as STAGE_EVAL_FILE
from omnifuse.eval.stage_eval import read_stage_rows, stage_task_table
from omnifuse.models.stages import select_parameters
from omnifuse.processing.processor import load_image
from omnifuse.progress import progress_bar
from omnifuse.rundir import RunDir
from omnifuse.untrusted import open_image, read_text

REPORT = "report.html"


def png_data_url(image: Image.Image | Path, max_side: int | None = None) -> str:
    """An image (or a PNG/JPEG file) as a data URL, optionally downscaled to ``max_side`` pixels."""
    if isinstance(image, Path):
        if max_side is None:  # a PNG this module drew itself (a plot, a heatmap): embedded as it is
            raw = image.read_bytes()
            kind = "png" if raw[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg"
            return f"data:image/{kind};base64,{base64.b64encode(raw).decode()}"
        image = open_image(image)
    img = image.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


@dataclass
class StageRow:
    component: str
    cells: list[str]  # one per stage: "frozen" / "LoRA 12,288" / "full 1,070,208"
    total: int


def stage_table(model, recipe) -> list[StageRow]:
    """Per component and stage: what trains and how many parameters (LoRA: the adapters')."""
    per_stage: list[dict[str, tuple[str, int]]] = []
    totals: dict[str, int] = {}
    for stage in recipe.stages:
        row = {}
        for comp, mode, chosen, total in select_parameters(model, stage):
            row[comp] = (mode, sum(p.numel() for _, p in chosen))
            totals[comp] = total
        per_stage.append(row)
    for name, module in model.named_children():
        if name not in totals and any(True for _ in module.parameters()):
            if not any(c.split(".")[0] == name for c in totals):
                totals[name] = sum(p.numel() for p in module.parameters())
    rows = []
    for comp in sorted(totals, key=lambda c: (c.split(".")[0], c)):
        cells = []
        for row in per_stage:
            mode, n = row.get(comp, ("frozen", 0))
            cells.append("frozen" if mode == "frozen" else f"{'LoRA' if mode == 'lora' else 'full'} {n:,}")
        rows.append(StageRow(comp, cells, totals[comp]))
    return rows


def _question(sample: Sample) -> str:
    return " ".join(m.text() for m in sample.prompt() if m.role == "user").strip()


def sample_cards(run: RunDir, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` evaluated samples with their images: wrong answers first, then right ones."""
    preds_file = run.path / "predictions.jsonl"
    eval_file = run.path / "eval.json"
    if not preds_file.exists() or not eval_file.exists():
        return []
    preds = read_records(preds_file, PREDICTION, "predictions file")
    data = read_document(eval_file, EVALUATION, "evaluation")["data"]
    try:
        by_id = {s.id: s for s in load_data(data)} if data else {}
    except OmnifuseError:
        return []  # the data moved since the evaluation: the page goes without the examples
    wrong = [p for p in preds if not p["correct"]]
    right = [p for p in preds if p["correct"]]
    # Half right, half wrong where both exist; the other kind fills up what one lacks.
    k = min(len(wrong), max(n // 2, n - len(right)))
    chosen = wrong[:k] + right[: n - k]
    cards = []
    for p in chosen:
        s = by_id.get(str(p["id"]))
        if s is None or not s.images():
            continue
        cards.append(
            {
                "sample": s,
                "image": png_data_url(load_image(s.images()[0], s.id), max_side=192),
                "question": _question(s),
                "answer": p["answer"],
                "prediction": p["prediction"],
                "correct": p["correct"],
                "type": p.get("question_type", ""),
            }
        )
    return cards


def explanation_figures(
    model, processor, cards: list[dict[str, Any]], n: int, progress: bool = True
) -> tuple[list[dict], str | None]:
    """Attention and gradient × input heatmaps (omnifuse.explain) for the first ``n`` sample cards;
    (figures, why there are none)."""
    import tempfile

    from omnifuse.explain.attribution import explain
    from omnifuse.explain.render import heatmap_png

    figures: list[dict] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        progress_bar("explaining samples", len(cards[:n]), progress) as bar,
    ):
        for k, card in enumerate(cards[:n]):
            sample = card["sample"]
            image = load_image(sample.images()[0], sample.id)
            try:
                expl = explain(
                    model, processor, image, card["question"], max_new_tokens=0, contributions=False
                )
            except OmnifuseError as e:
                return figures, str(e)
            token = expl.target_tokens[0]
            maps = []
            att = expl.attention
            if att is not None and att.heatmap is not None:
                maps.append(
                    ("attention", att.heatmap, att.grid, f"image share {100 * att.image_share:.0f} %")
                )
            if expl.gradient.heatmap is not None:
                maps.append(("gradient × input", expl.gradient.heatmap, None, ""))
            for name, heat, grid, note in maps:
                path = Path(tmp) / f"{k}-{len(figures)}.png"
                heatmap_png(image, heat, f"{name} for {token!r}", path, grid)
                figures.append(
                    {
                        "title": f"{card['question']} → {token.strip()!r}",
                        "caption": f"{name}{', ' + note if note else ''}",
                        "image": png_data_url(path),
                    }
                )
            bar.advance()
    reason = (
        None
        if figures
        else "this model's explanations have no map over the image (omnifuse explain says why)"
    )
    return figures, reason


def caption_tables(evaluation: dict | None, path: Path) -> list[dict]:
    """Per captioning stage in eval.json (``captions``): its data, decoder, table and example captions."""
    out = []
    try:
        for stage, scores in ((evaluation or {}).get("captions") or {}).items():
            title, columns, rows = caption_table(scores)
            examples = [(str(e["id"]), str(e["prediction"]), " / ".join(map(str, e["references"])))
                        for e in scores.get("examples", [])]  # fmt: skip
            out.append({"stage": stage, "data": str(scores["data"]), "decoder": str(scores["decoder"]),
                        "title": title, "columns": columns, "rows": rows, "examples": examples})  # fmt: skip
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise OmnifuseError(
            f"{path}: its captions section is damaged ({type(exc).__name__}: {exc}); run omnifuse eval again"
        ) from None
    return out


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("omnifuse.eval", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def write_html_report(
    run: RunDir,
    loaded=None,
    samples: int = 12,
    explained: int = 4,
    progress: bool = True,
) -> Path:
    """Write RUN/report.html, with explanation heatmaps for the first ``explained`` samples shown.
    ``loaded``: the run's ``(recipe, model, processor)``, or a function returning it (called once the
    run files are checked, so that a damaged one fails before the model loads)."""

    run.require_trained()
    # Every run file is read (and checked) before the model loads: a damaged one fails in a second.
    evaluation = read_optional(run.path / "eval.json", EVALUATION, "evaluation")
    robustness = read_optional(run.path / "robustness.json", ROBUSTNESS, "robustness probes file")
    manifest = read_optional(run.path / "eval_manifest.json", MANIFEST, "evaluation manifest")
    metrics = read_records(run.metrics_file, STEP, "metrics file") if run.metrics_file.exists() else []
    recipe_yaml = read_text(run.recipe_file, "run recipe")
    cards = sample_cards(run, samples)
    captions = caption_tables(evaluation, run.path / "eval.json")
    stage_rows = read_stage_rows(run.path)
    per_stage = stage_task_table(stage_rows, run.path / STAGE_EVAL_FILE) if stage_rows else None
    if loaded is None:  # eval sits below the tasks, which load runs (omnifuse.tasks.load_language_model)
        raise TypeError("pass loaded=(recipe, model, processor) of the run, or a function returning it")
    recipe, model, processor = loaded() if callable(loaded) else loaded
    heatmaps, no_heatmaps = [], None
    if explained:
        heatmaps, no_heatmaps = explanation_figures(model, processor, cards, explained, progress)
    curve = run.path / "loss.png"
    has_curve = plot_loss(run.metrics_file, curve)
    html = (
        _environment()
        .get_template("report.html")
        .render(
            name=recipe.name,
            run=str(run.path),
            created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            version=__version__,
            evaluation=evaluation,
            robustness=robustness,
            captions=captions,
            per_stage=per_stage,
            manifest=manifest,
            curve=png_data_url(curve) if has_curve else None,
            steps=len(metrics),
            evals_during_training=[m for m in metrics if "eval_accuracy" in m],
            stages=recipe.stages,
            stage_rows=stage_table(model, recipe),
            total_params=sum(p.numel() for p in model.parameters()),
            cards=cards,
            heatmaps=heatmaps,
            no_heatmaps=no_heatmaps,
            recipe_yaml=recipe_yaml,
        )
    )
    out = run.path / REPORT
    atomic_write_text(out, html)
    return out
