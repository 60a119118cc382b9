"""``task: classify``: a classic fusion classifier trained on the cached features of frozen encoders.

``features.py`` (splits, classes, normalised features, logits), ``trainer.py`` (AdamW, modality dropout,
DP-SGD, per-epoch checkpoints), ``evaluation.py`` (accuracy / macro-F1 / confusion matrix, robustness,
report — at the end of training and in ``omnifuse eval``), ``reload.py`` (a trained run rebuilt)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from omnifuse.recipe import ClassifierRecipe
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
    percent,
    vqa_options_refused,
)


class ClassifyTask:
    name = "classify"
    score_name = "accuracy"
    group_name = "class"
    sweep_columns = (
        SweepColumn("train s", lambda r: f"{r['train_seconds']:.1f}"),
        SweepColumn("macro F1", lambda r: f"{r['macro_f1']:.3f}"),
        SweepColumn("ε", lambda r: "—" if r["epsilon"] is None else f"{r['epsilon']:.2f}"),
    )

    def describe(self, recipe: ClassifierRecipe) -> str:
        mods = ", ".join(f"{m} ({s.type})" for m, s in sorted(recipe.model.encoders.items()))
        dp = f"; DP-SGD at ε {recipe.privacy.target_epsilon}" if recipe.privacy else ""
        return (
            f"valid classifier recipe {recipe.name!r}; {recipe.model.fusion.type} fusion of {mods}, "
            f"{recipe.train.epochs} epochs{dp}"
        )

    def train(
        self, recipe: ClassifierRecipe, out: Path, *, resume: bool, console: Console, progress: bool,
        tensorboard: bool = False,
    ) -> TrainDone:  # fmt: skip
        from omnifuse.tasks.classify.trainer import train_classifier

        no_tensorboard(tensorboard)
        res = train_classifier(recipe, out, resume=resume, console=console, progress=progress)
        return TrainDone(Path(out), res.already_finished, scores_printout(Path(out)), res.seconds)

    def evaluate(self, run: RunDir, request: EvalRequest) -> Evaluated:
        from omnifuse.tasks.classify.reload import evaluate_classifier_run

        vqa_options_refused(
            request,
            "classifier",
            "its robustness to missing and noisy modalities: eval.robustness in the recipe",
        )
        result = evaluate_classifier_run(run, *request.run_options())
        printout = scores_printout(run.path)
        printout[1:1] = [confusion_table(result), *importance_printout(result.get("importance"))]
        return Evaluated(result, printout)

    def report(
        self, run: RunDir, samples: int, explained: int, progress: bool,
        device: str | None = None, dtype: str | None = None,
    ) -> Path:  # fmt: skip
        raise no_html_report(run, "classifier")

    def load_language_model(
        self, run: RunDir, progress: bool = True, parts: dict | None = None,
        device: str | None = None, dtype: str | None = None, quantize: str | None = None,
    ):  # fmt: skip
        raise no_language_model(run, "classifier")

    def explain_inputs(
        self, run: RunDir, question: str, image: Path | None, audio: Path | None,
        device: str | None = None, dtype: str | None = None,
    ):  # fmt: skip
        """(model, one sample's normalised features per modality, classes) for ``omnifuse explain``."""
        from omnifuse.tasks.classify.explainable import explain_inputs

        return explain_inputs(run, question, image, audio, device, dtype)

    def training_samples(self, recipe: ClassifierRecipe) -> int:
        from omnifuse.data.sources import load_data

        n = len(load_data(recipe.data.train))
        return recipe.train.epochs * min(n, recipe.data.train_limit or n)

    def plan(self, recipe: ClassifierRecipe) -> str:
        return f"{recipe.train.epochs} epochs"

    def sweep_run(self, recipe: ClassifierRecipe, job: SweepRun) -> dict:
        """Train and evaluate one fusion classifier on its cached features (no latency: a head answers in
        microseconds; the encoders' cost is the same for every fusion)."""
        from omnifuse.tasks.classify.trainer import train_classifier

        run = job.run
        trained = train_classifier(
            recipe, run.path, resume=job.resume, console=job.console, progress=job.progress
        )
        result = json.loads((run.path / "eval.json").read_text())
        record = {
            "accuracy": result["accuracy"],
            "n_eval": result["n"],
            "macro_f1": result["macro_f1"],
            "trainable_params": result["trainable_params"],
            "wall_seconds_last_attempt": round(trained.seconds, 2),
        }
        if "privacy" in result:
            record["epsilon"] = result["privacy"]["epsilon"]
            record["target_epsilon"] = result["privacy"]["target_epsilon"]
        rob = run.path / "robustness.json"
        if rob.is_file():
            record["missing"] = {m: v["dropped"] for m, v in json.loads(rob.read_text())["missing"].items()}
        return record


def confusion_table(result: dict) -> TableData:
    """Counts of true class (rows) × predicted class (columns)."""
    labels = [str(c) for c in result["labels"]]
    rows = tuple(
        (t, *(str(n) for n in counts)) for t, counts in zip(labels, result["confusion"], strict=True)
    )
    return TableData("confusion matrix (rows: true class, columns: predicted)", ("", *labels), rows)


def scores_printout(run_dir: Path) -> Printout:
    """The scores line, the robustness table and where the report is (after train and eval)."""
    result = json.loads((run_dir / "eval.json").read_text())
    line = (
        f"{result['fusion']} fusion: accuracy {percent(result['accuracy'], result['accuracy_ci95'])}, macro F1 "
        f"{result['macro_f1']:.3f} on {result['n']} samples; {result['trainable_params']:,} trainable parameters"
    )
    if "privacy" in result:
        p = result["privacy"]
        line += f"; DP-SGD spent ε = {p['epsilon']:.2f} (target {p['target_epsilon']}, δ = {p['delta']:g})"
    printout: Printout = [line]
    rob_file = run_dir / "robustness.json"
    if rob_file.is_file():
        rob = json.loads(rob_file.read_text())
        rows = [("clean", f"{100 * rob['clean']:.1f} %")]
        for m, v in rob["missing"].items():
            rows.append(
                (f"{m} missing (zeroed / dropped)", f"{100 * v['zeroed']:.1f} / {100 * v['dropped']:.1f} %")
            )
        for std, row in rob["noise"].items():
            rows += [(f"noise σ={std} on {target}", f"{100 * acc:.1f} %") for target, acc in row.items()]
        printout.append(TableData("robustness (accuracy)", ("condition", "accuracy"), tuple(rows)))
    printout.append(f"run directory: {run_dir}  report: {run_dir / 'report.md'}")
    return printout


CLASSIFY = ClassifyTask()
