"""``task: align``: cross-modal alignment on cached frozen features — CLIP / SigLIP dual encoders, linear
and deep CCA, DeViSE, the cycle-consistent autoencoder (the components live in :mod:`omnifuse.alignment`).

``features.py`` (the pairs), ``loop.py`` (the minibatch loop), ``methods.py`` / ``zero_shot.py`` (each
method's train / evaluate / weights / restore), ``evaluation.py`` (retrieval R@1/5/10 both ways, the
same at the end of training and in ``omnifuse eval``), ``report.py``, ``run.py`` (train and eval a run)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from omnifuse.recipe import AlignRecipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.base import (
    EvalRequest,
    Evaluated,
    Printout,
    SweepColumn,
    SweepRun,
    TableData,
    TrainDone,
    importance_printout,
    no_html_report,
    no_language_model,
    no_tensorboard,
    vqa_options_refused,
)


def _mean(key: str, fmt: str = "{:.1f}", scale: float = 100.0):
    def cell(summary: dict) -> str:
        value = (summary.get("metrics") or {}).get(key)
        return "—" if value is None else fmt.format(scale * value)

    return cell


class AlignTask:
    name = "align"
    score_name = "R@1"
    group_name = "direction"
    sweep_columns = (
        SweepColumn("train s", lambda r: f"{r['train_seconds']:.1f}"),
        SweepColumn("R@5", _mean("R@5")),
        SweepColumn("R@10", _mean("R@10")),
    )

    def describe(self, recipe: AlignRecipe) -> str:
        modalities = " ↔ ".join(f"{m} ({e.type})" for m, e in recipe.model.encoders.items())
        return f"valid alignment recipe {recipe.name!r}; method {recipe.method.type}, {modalities}"

    def train(
        self, recipe: AlignRecipe, out: Path, *, resume: bool, console: Console, progress: bool,
        tensorboard: bool = False,
    ) -> TrainDone:  # fmt: skip
        from omnifuse.tasks.align.evaluation import headline
        from omnifuse.tasks.align.run import train_align

        no_tensorboard(tensorboard)
        result = train_align(recipe, out, progress=progress, resume=resume)
        if result.already_finished:
            line = f"{recipe.name} ({recipe.method.type}): {headline(result.evaluation)}"
            return TrainDone(Path(out), True, [line])
        line = (
            f"trained {recipe.name} ({recipe.method.type}) in {result.seconds:.1f} s: "
            f"{headline(result.evaluation)}; run directory: {out}"
        )
        return TrainDone(Path(out), False, [line], result.seconds)

    def evaluate(self, run: RunDir, request: EvalRequest) -> Evaluated:
        from omnifuse.tasks.align.run import evaluate_align_run

        vqa_options_refused(request, "alignment", "retrieval is scored against its chance level in eval.json")
        evaluation = evaluate_align_run(run, *request.run_options())
        printout = eval_printout(run.path, evaluation)
        return Evaluated(
            evaluation, printout[:-1] + importance_printout(evaluation.get("importance")) + printout[-1:]
        )

    def report(
        self, run: RunDir, samples: int, explained: int, progress: bool,
        device: str | None = None, dtype: str | None = None,
    ) -> Path:  # fmt: skip
        raise no_html_report(run, "alignment")

    def load_language_model(
        self, run: RunDir, progress: bool = True, parts: dict | None = None,
        device: str | None = None, dtype: str | None = None, quantize: str | None = None,
    ):  # fmt: skip
        raise no_language_model(run, "alignment")

    def training_samples(self, recipe: AlignRecipe) -> int:
        """Epochs × training pairs (linear CCA: one pass over the pairs)."""
        from omnifuse.data.sources import load_data

        n = len(load_data(recipe.data.train))
        n = min(n, recipe.data.train_limit or n)
        return n if recipe.method.type == "cca" else recipe.train.epochs * n

    def plan(self, recipe: AlignRecipe) -> str:
        return "one fit" if recipe.method.type == "cca" else f"{recipe.train.epochs} epochs"

    def sweep_run(self, recipe: AlignRecipe, job: SweepRun) -> dict:
        """Train and evaluate one alignment run; the sweep compares mean R@1 of both directions
        (DeViSE: zero-shot accuracy among all classes)."""
        from omnifuse.tasks.align.evaluation import score
        from omnifuse.tasks.align.run import train_align

        result = train_align(recipe, job.run.path, progress=job.progress)
        evaluation = result.evaluation
        metrics = {}
        for direction, r in (evaluation.get("retrieval") or {}).items():
            metrics |= {f"{direction} {k}": r[k] for k in ("R@1", "R@5", "R@10")}
        for k in ("R@1", "R@5", "R@10"):
            values = [v for name, v in metrics.items() if name.endswith(f" {k}")]
            if values:
                metrics[k] = sum(values) / len(values)
        return {
            "accuracy": score(evaluation),
            "n_eval": evaluation["n_eval_pairs"],
            "trainable_params": _stored_parameters(job.run),
            "wall_seconds_last_attempt": round(result.seconds, 2),
            "metrics": metrics,
        }


def _stored_parameters(run: RunDir) -> int:
    """Learned numbers in model.safetensors, the normalisation statistics left out."""
    from omnifuse.models.weights import read_tensors

    return sum(t.numel() for k, t in read_tensors(run.weights_file).items() if not k.startswith("normalize."))


def eval_printout(run_dir: Path, evaluation: dict) -> Printout:
    """R@1/5/10 per direction against chance (or DeViSE's zero-shot accuracy), then the report's path."""
    from omnifuse.tasks.align.evaluation import headline

    printout: Printout = []
    if "retrieval" in evaluation:
        rows = []
        for d, r in evaluation["retrieval"].items():
            c = evaluation["chance"][d]
            rows.append((d.replace("_", " "), *(f"{100 * r[f'R@{k}']:.1f}" for k in (1, 5, 10)),
                         f"{r['median_rank']:g}", f"{100 * c['R@1']:.1f}"))  # fmt: skip
        title = f"retrieval on {evaluation['n_eval_pairs']} eval pairs ({evaluation['method']}, R@k in %)"
        columns = ("direction", "R@1", "R@5", "R@10", "median rank", "chance R@1")
        printout.append(TableData(title, columns, tuple(rows)))
    printout.append(f"{evaluation['method']}: {headline(evaluation)}")
    printout.append(f"run directory: {run_dir}  report: {run_dir / 'report.md'}")
    return printout


ALIGN = AlignTask()
