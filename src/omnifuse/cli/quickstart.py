"""``omnifuse quickstart``: train the quickstart recipe on easy-vqa, evaluate it, report, chat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from omnifuse.cli import console
from omnifuse.cli.common import Overrides, Progress, app
from omnifuse.cli.render import print_scores
from omnifuse.progress import peak_rss_gb

QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.yaml"


@app.command()
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/quickstart"),
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Train the quickstart recipe on easy-vqa, evaluate it against a blind baseline, report, chat."""
    from omnifuse.assets import prepare_all
    from omnifuse.data.sources import resolve_data_path
    from omnifuse.eval.runner import evaluate_run
    from omnifuse.generation.chat import ChatSession
    from omnifuse.recipe import load_recipe
    from omnifuse.rundir import RunDir, load_model
    from omnifuse.training.loop import train as run_training

    recipe = load_recipe(QUICKSTART, set_ or [])
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    prepare_all(progress=progress)
    times["asset preparation (once)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    resolve_data_path(recipe.data.train)
    test_file = resolve_data_path(recipe.data.eval)
    times["data preparation (once)"] = time.perf_counter() - t0
    run = RunDir(out_dir)
    resume = run.exists()
    if resume:
        console.err.print(f"{out_dir} exists: continuing that run (delete it to start over)")
    t0 = time.perf_counter()
    run_training(recipe, out_dir, resume=resume, console=console.err, progress=progress)
    times["training"] = time.perf_counter() - t0
    loaded = load_model(run, progress=progress)
    outcome = evaluate_run(run, progress=progress, loaded=loaded)
    times["evaluation"] = outcome.seconds
    if outcome.blind_seconds:
        times["blind evaluation"] = outcome.blind_seconds
    print_scores(outcome)
    summary = Table(title="quickstart")
    summary.add_column("")
    summary.add_column("", justify="right")
    summary.add_row("accuracy", f"{100 * outcome.result.accuracy:.1f} % (n={outcome.result.n})")
    if outcome.blind:
        summary.add_row("blind baseline", f"{100 * outcome.blind.accuracy:.1f} %")
    for k, v in times.items():
        summary.add_row(k, f"{v:.1f} s")
    summary.add_row(
        "training + evaluation", f"{times['training'] + outcome.seconds + (outcome.blind_seconds or 0):.1f} s"
    )
    summary.add_row("peak memory (RSS)", f"{peak_rss_gb():.2f} GB")
    console.out.print(summary)
    from omnifuse.eval.html import write_html_report

    page = write_html_report(run, loaded=loaded, progress=progress)
    console.out.print(
        f"report: {page} (one page: scores, stages, curves, samples, heatmaps) and {out_dir / 'report.md'}"
    )
    # A chat example on a test image.
    from omnifuse.data.sample import load_jsonl

    sample = load_jsonl(test_file)[0]
    image = sample.images()[0]
    recipe_, model, processor = loaded
    session = ChatSession(model, processor, recipe_)
    session.set_image(image)
    console.out.print("\nchat example:")
    for q in ("what shape is in the image?", "what color is the shape?"):
        console.out.print(f"  $ omnifuse chat {out_dir} --image {image} {q!r}")
        console.out.print(f"  {session.ask(q)}")
        session.reset()
        session.set_image(image)
