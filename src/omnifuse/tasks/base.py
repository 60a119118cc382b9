"""The Task protocol: what one kind of work (``task:`` in a recipe) owns, and the plain data it hands the
surfaces (CLI, sweep) to show.

A task turns its recipe into a trained run directory and back: it builds and trains the model, evaluates
it (the same metrics at the end of training and in ``omnifuse eval``), says what ``validate`` prints,
what one sweep run records and how ``compare`` labels its paired scores. The surfaces above it dispatch
once, through :mod:`omnifuse.tasks` (recipe class → task), and render what a task returns without knowing
which task it was: text lines and :class:`TableData`, never rich objects (the task layer has no terminal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rich.console import Console

from omnifuse.errors import OmnifuseError
from omnifuse.rundir import RunDir

if TYPE_CHECKING:  # the settings' module drives models: imported where importance runs
    from omnifuse.eval.importance import ImportanceSettings


@dataclass(frozen=True)
class TableData:
    """A table to print: the title, the column names, rows of cells (already formatted)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    # Columns aligned left (the others right): by default the first.
    left: tuple[int, ...] = (0,)


# What a task hands a surface to print, in order: lines of plain text (never markup) and tables.
Printout = list[str | TableData]


@dataclass(frozen=True)
class TrainDone:
    """A finished ``train``: where, whether it had finished before (nothing was trained), what to print."""

    run_dir: Path
    already_finished: bool
    printout: Printout
    seconds: float = 0.0


@dataclass(frozen=True)
class EvalRequest:
    """``omnifuse eval RUN`` options (``blind``, ``manifest`` and ``robustness`` are the VQA evaluator's:
    other tasks refuse them, :func:`vqa_options_refused`); ``importance`` (``--importance``): every task
    adds its modality-importance table to eval.json."""

    data: str | None = None
    limit: int | None = None
    blind: bool | None = None
    manifest: Path | None = None
    robustness: bool = False
    progress: bool = True
    # ``--device`` / ``--dtype``: override the recipe's runtime section (None: the recipe's)
    device: str | None = None
    dtype: str | None = None
    importance: ImportanceSettings | None = None
    # ``--fastv-keep`` / ``--fastv-layer``: a FastVSpec replacing the recipe's generation.fastv (None: the recipe's)
    fastv: Any = None
    quantize: str | None = None  # ``--quantize``: the LLM's storage (None: the recipe's runtime.quantize)
    # ``--packed-weights``: auto | off (None: the recipe's generation.packed_weights)
    packed_weights: str | None = None

    def run_options(self) -> tuple:
        """(data, limit, progress, device, dtype, importance): what a classifier or alignment run's evaluation
        takes after the run."""
        return self.data, self.limit, self.progress, self.device, self.dtype, self.importance


@dataclass(frozen=True)
class Evaluated:
    """An evaluation written into the run directory: ``summary`` is what ``--json`` prints."""

    summary: dict
    printout: Printout


@dataclass(frozen=True)
class SweepRun:
    """What a sweep hands a task for one variant × seed."""

    run: RunDir
    resume: bool
    console: Console
    progress: bool
    parts_factory: Callable[[], dict] | None = None
    latency_samples: int = 20


@dataclass(frozen=True)
class SweepColumn:
    """One task-specific column of the sweep table: its header and the cell of a variant's summary
    (``VariantSummary`` as a dict: accuracy, ci, ..., and the means of the task's extra metrics)."""

    header: str
    cell: Callable[[dict], str]


@runtime_checkable
class Task(Protocol):
    """One kind of work. ``name`` is its ``task:`` value in a recipe."""

    name: str
    # ``compare``'s labels: the per-sample score (mean of predictions.jsonl's ``score``) and the groups
    # (predictions.jsonl's ``question_type``).
    score_name: str
    group_name: str
    # Sweep table: columns after variant / score / trainable / train time.
    sweep_columns: tuple[SweepColumn, ...]

    def describe(self, recipe: Any) -> str:
        """``omnifuse validate``'s line for a valid recipe."""
        ...

    def train(
        self, recipe: Any, out: Path, *, resume: bool, console: Console, progress: bool, tensorboard: bool
    ) -> TrainDone:
        """Build the model, train it into the run directory ``out``, evaluate it there."""
        ...

    def evaluate(self, run: RunDir, request: EvalRequest) -> Evaluated:
        """Reload a trained run, score it, write eval.json, predictions.jsonl and report.md into it."""
        ...

    def report(
        self, run: RunDir, samples: int, explained: int, progress: bool,
        device: str | None = None, dtype: str | None = None,
    ) -> Path:  # fmt: skip
        """``omnifuse report``: the run's page (RUN/report.html), or what to read instead. ``device`` /
        ``dtype`` (here and below): where the model runs, overriding the recipe's ``runtime`` section."""
        ...

    def load_language_model(
        self, run: RunDir, progress: bool = True, parts: dict | None = None,
        device: str | None = None, dtype: str | None = None, quantize: str | None = None,
    ) -> Any:  # fmt: skip
        """(recipe, model, processor) of a run that has a language model, placed on ``device`` in
        ``dtype``, its LLM quantised as ``quantize`` says (None: the recipe's ``runtime.quantize``);
        otherwise a clear error."""
        ...

    def training_samples(self, recipe: Any) -> int:
        """Samples the recipe trains on in total (the sweep budget counts these)."""
        ...

    def plan(self, recipe: Any) -> str:
        """One cell of ``sweep --plan``: what training does (stages, epochs)."""
        ...

    def sweep_run(self, recipe: Any, job: SweepRun) -> dict:
        """Train and evaluate one sweep run; the record's ``accuracy`` is the score the sweep compares."""
        ...


@dataclass
class Registry:
    """Recipe class → task. ``register`` adds one (a plugin's task for its own recipe class)."""

    tasks: dict[type, Task] = field(default_factory=dict)

    def register(self, recipe_class: type, task: Task) -> None:
        if not isinstance(task, Task):
            raise TypeError(f"{task!r} does not satisfy omnifuse.tasks.Task")
        self.tasks[recipe_class] = task

    def of(self, recipe: Any) -> Task:
        try:
            return self.tasks[type(recipe)]
        except KeyError:
            known = ", ".join(c.__name__ for c in self.tasks)
            raise LookupError(f"no task is registered for {type(recipe).__name__} (known: {known})") from None


def percent(value: float, ci: tuple[float, float] | list[float] | None = None) -> str:
    """``85.7 % [83.5, 87.8]``: a fraction and its 95 % interval, in percent."""
    text = f"{100 * value:.1f} %"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def no_tensorboard(tensorboard: bool) -> None:
    if tensorboard:
        raise OmnifuseError(
            "--tensorboard is for LLM recipes; classifier and alignment runs log their epochs to "
            "RUN/metrics.jsonl (plotted in RUN/report.md)"
        )


def vqa_options_refused(request: EvalRequest, kind: str, robustness: str) -> None:
    given = [
        flag
        for flag, value in (
            ("--fastv-keep", request.fastv),
            ("--blind", request.blind),
            ("--manifest", request.manifest),
            ("--robustness", request.robustness),
            ("--quantize", request.quantize),
            ("--packed-weights", request.packed_weights),
        )
        if value
    ]
    if given:
        raise OmnifuseError(
            f"{' and '.join(given)}: for LLM runs (VQA); a {kind} run is evaluated on --data / --limit only,"
            f" with --importance for its modality importance ({robustness})"
        )


def no_html_report(run: RunDir, kind: str) -> OmnifuseError:
    return OmnifuseError(
        f"{run.path} is a {kind} run: its report is {run.path / 'report.md'} (with its plots), written by "
        f"`omnifuse train` and rewritten by `omnifuse eval {run.path}`; report.html is for LLM runs"
    )


def no_language_model(run: RunDir, kind: str) -> OmnifuseError:
    return OmnifuseError(
        f"{run.path} is a {kind} run, which has no language model to load, chat with or serve; score it "
        f"with `omnifuse eval {run.path}` (its scores are in eval.json and report.md)"
    )


def importance_printout(importance: dict | None) -> Printout:
    """eval.json's ``importance`` as a table (modality × perturbation: intact, perturbed, drop [95 % CI], p)
    and the lines that say how it was measured."""
    if importance is None:
        return []
    from omnifuse.eval.importance import explanation, table

    title, columns, rows = table(importance)
    left = tuple(range(columns.index("n")))
    return [
        TableData(f"{title}; eval.json: importance", columns, tuple(rows), left),
        *explanation(importance),
    ]
