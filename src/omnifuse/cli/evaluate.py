"""``omnifuse eval``, ``report`` and ``compare``: score a trained run, write its page, compare two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from omnifuse.cli import console
from omnifuse.cli.common import (
    Device,
    Dtype,
    FastVKeep,
    FastVLayer,
    Nproc,
    PackedWeights,
    Progress,
    Quantize,
    app,
    check_placement,
    fastv_option,
    packed_weights_option,
    quiet_unless_main,
    relaunch,
)
from omnifuse.cli.render import print_comparison, print_printout
from omnifuse.errors import OmnifuseError


@app.command("eval")
def eval_(
    run_dir: Path,
    data: Annotated[
        str | None, typer.Option(help="JSONL file in the native format (default: the recipe's eval data)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="evaluate a seeded subset of this many samples")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    blind: Annotated[
        bool | None, typer.Option("--blind/--no-blind", help="also run the text-only baseline")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="re-run an earlier evaluation from its manifest (RUN/eval_manifest.json)"),
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option(help="also run the robustness probes (blank, noise, shuffled images, token dropout)"),
    ] = False,
    importance: Annotated[
        bool,
        typer.Option(
            help="also measure each modality's importance: the score's drop when it is removed, permuted "
            "across samples or replaced by noise, with paired 95 % CIs (eval.json: importance)"
        ),
    ] = False,
    perturbations: Annotated[
        str | None,
        typer.Option(help="with --importance: which of remove,permute,noise (default: all that apply)"),
    ] = None,
    importance_seed: Annotated[
        int | None, typer.Option(help="with --importance: the seed of the permutations and the noise (0)")
    ] = None,
    importance_repeats: Annotated[
        int | None,
        typer.Option(
            help="with --importance: draws of each permutation and noise, averaged per sample (1; each is "
            "one more pass: a generation pass on LLM runs)"
        ),
    ] = None,
    progress: Progress = True,
    device: Device = None,
    dtype: Dtype = None,
    quantize: Quantize = None,
    nproc: Nproc = None,
    fastv_keep: FastVKeep = None,
    fastv_layer: FastVLayer = None,
    packed_weights: PackedWeights = None,
) -> None:
    """Evaluate a trained run with its task's metrics: exact-match VQA accuracy per question type with a
    blind baseline; a classifier's accuracy, macro-F1 and confusion matrix; an alignment's R@1/5/10 in
    both directions. With --nproc (or under torchrun) a generative run's questions are sharded across
    the processes, with the predictions of one process. --importance adds a table per modality × {remove,
    permute, noise} of the score intact, perturbed and the drop with a paired 95 % CI (docs: README,
    Evaluation)."""
    from omnifuse.eval.importance import importance_settings
    from omnifuse.rundir import RunDir
    from omnifuse.runtime import current_world
    from omnifuse.tasks import task_of_run
    from omnifuse.tasks.base import EvalRequest

    check_placement(device, dtype, quantize)
    settings = importance_settings(perturbations, importance_seed, importance, importance_repeats)
    fastv = fastv_option(fastv_keep, fastv_layer)
    packed_weights = packed_weights_option(packed_weights)
    run = RunDir(run_dir)
    world = current_world()
    several = world.distributed or (nproc or 1) > 1
    task = task_of_run(run)
    if several and task.name != "generate":  # refused before any process starts
        raise OmnifuseError(
            f"a {task.name} run is evaluated in one process (its features are small): drop --nproc, torchrun "
            "or accelerate launch"
        )
    if several and not world.distributed:
        relaunch(nproc)
    quiet_unless_main()
    request = EvalRequest(
        data,
        limit,
        blind,
        manifest,
        robustness,
        progress=progress and not as_json,
        device=device,
        dtype=dtype,
        importance=settings,
        fastv=fastv,
        quantize=quantize,
        packed_weights=packed_weights,
    )
    evaluated = task.evaluate(run, request)
    if not world.main:
        return
    if as_json:
        print(json.dumps(evaluated.summary))
        return
    print_printout(evaluated.printout)


@app.command()
def report(
    run_dir: Path,
    samples: Annotated[int, typer.Option(min=0, help="sample predictions shown with their images")] = 12,
    explained: Annotated[
        int, typer.Option("--explain", min=0, help="of those, how many get attention / gradient heatmaps")
    ] = 4,
    progress: Progress = True,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Write RUN/report.html: one self-contained page (recipe, stages, curves, scores, robustness,
    samples, heatmaps)."""
    from omnifuse.rundir import RunDir
    from omnifuse.tasks import task_of_run

    check_placement(device, dtype)
    run = RunDir(run_dir)
    path = task_of_run(run).report(
        run, samples=samples, explained=explained, progress=progress, device=device, dtype=dtype
    )
    console.out.print(f"report: {path}")


@app.command()
def compare(
    run_a: Path,
    run_b: Path,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Compare two evaluated runs on the same samples: B − A with a 95 % paired bootstrap CI and a
    paired permutation-test p-value, overall and per question type (classifier runs: per class;
    alignment runs: R@1 per retrieval direction)."""
    from omnifuse.eval.compare import compare_runs
    from omnifuse.rundir import RunDir
    from omnifuse.tasks import task_for
    from omnifuse.tasks.generate import GENERATE

    c = compare_runs(run_a, run_b)
    if as_json:
        print(json.dumps(c.summary()))
        return
    run = RunDir(run_a)  # its task names the score and the groups (bare predictions: VQA's names)
    print_comparison(c, run_a, run_b, task_for(run.recipe()) if run.exists() else GENERATE)
