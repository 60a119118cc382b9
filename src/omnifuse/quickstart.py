"""The quickstart pipeline as a library function: prepare the packaged assets and easy-vqa, train the shipped
quickstart recipe, evaluate it against its blind baseline, write the HTML report, ask two chat questions.

``omnifuse quickstart`` (and ``make demo``) call :func:`run_quickstart` and print what it returns; from Python::

    from omnifuse.quickstart import run_quickstart

    result = run_quickstart("runs/quickstart", ["stages.1.steps=20"], progress=False)
    print(result.outcome.result.accuracy, result.report)

Nothing here prints results; progress bars and log lines go to ``console`` (stderr by default).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from omnifuse.progress import peak_rss_gb
from omnifuse.recipes import QUICKSTART

CHAT_QUESTIONS = ("what shape is in the image?", "what color is the shape?")


@dataclass
class QuickstartResult:
    run_dir: Path
    outcome: object  # omnifuse.eval.runner.EvalOutcome: scores, blind baseline, timings
    times: dict[str, float]  # seconds per step, in the order they ran
    peak_rss_gb: float  # peak resident memory once the evaluation is done
    report: Path  # RUN/report.html
    image: Path  # the test image the chat examples ask about
    chat: list[tuple[str, str]]  # (question, answer)

    @property
    def train_and_eval_seconds(self) -> float:
        return self.times["training"] + self.outcome.seconds + (self.outcome.blind_seconds or 0)


def run_quickstart(
    out_dir: Path | str = Path("runs/quickstart"),
    overrides: Sequence[str] = (),
    *,
    progress: bool = True,
    console: Console | None = None,
    questions: Sequence[str] = CHAT_QUESTIONS,
) -> QuickstartResult:
    """Run the whole quickstart into ``out_dir`` (an existing run there is continued, not restarted);
    ``overrides`` are ``dotted.key=value`` changes to the quickstart recipe, as with ``--set``."""
    from omnifuse.eval.html import write_html_report
    from omnifuse.eval.runner import evaluate_run
    from omnifuse.recipe import load_recipe
    from omnifuse.rundir import RunDir
    from omnifuse.tasks.generate.load import load_model

    console = console or Console(stderr=True, soft_wrap=True)
    out_dir = Path(out_dir)
    recipe = load_recipe(QUICKSTART, list(overrides))
    times: dict[str, float] = {}
    test_file = _prepare(recipe, times, progress)
    run = RunDir(out_dir)
    _train(recipe, run, times, console, progress)
    loaded = load_model(run, progress=progress)
    outcome = evaluate_run(run, progress=progress, loaded=loaded)
    times["evaluation"] = outcome.seconds
    if outcome.blind_seconds:
        times["blind evaluation"] = outcome.blind_seconds
    peak = peak_rss_gb()
    page = write_html_report(run, loaded=loaded, progress=progress)
    image, answers = chat_examples(loaded, test_file, questions)
    return QuickstartResult(out_dir, outcome, times, peak, page, image, answers)


def _prepare(recipe, times: dict[str, float], progress: bool) -> Path:
    """Convert the packaged assets and export easy-vqa, once; returns the test file."""
    from omnifuse.assets import prepare_all
    from omnifuse.data.sources import resolve_data_path

    t0 = time.perf_counter()
    prepare_all(progress=progress)
    times["asset preparation (once)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    resolve_data_path(recipe.data.train)
    test_file = resolve_data_path(recipe.data.eval)
    times["data preparation (once)"] = time.perf_counter() - t0
    return test_file


def _train(recipe, run, times: dict[str, float], console: Console, progress: bool) -> None:
    from omnifuse.training.loop import train as run_training

    resume = run.exists()
    if resume:
        console.print(f"{run.path} exists: continuing that run (delete it to start over)")
    t0 = time.perf_counter()
    run_training(recipe, run.path, resume=resume, console=console, progress=progress)
    times["training"] = time.perf_counter() - t0


def chat_examples(loaded, test_file: Path, questions: Sequence[str]) -> tuple[Path, list[tuple[str, str]]]:
    """Each question asked afresh about the first test image, with the trained model ``loaded``."""
    from omnifuse.data.jsonl import load_jsonl
    from omnifuse.generation.chat import ChatSession

    image = load_jsonl(test_file)[0].images()[0]
    recipe, model, processor = loaded
    session = ChatSession(model, processor, recipe)
    answers = []
    for q in questions:
        session.reset()
        session.set_image(image)
        answers.append((q, session.ask(q)))
    return image, answers
