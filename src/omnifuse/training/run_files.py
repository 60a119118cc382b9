"""The run directory as training sees it: created or refused at the start, checked on resume (the
recipe it was started with, its progress, its metrics written after the last checkpoint)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from rich.console import Console

from omnifuse import __version__
from omnifuse.atomic import atomic_write_text
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import Recipe, RecipeDeprecation, Spec, dump_recipe, parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.runtime import Placement, World
from omnifuse.untrusted import check_out_dir, parse_yaml, read_text


def checked_progress(state: dict, recipe: Recipe, run: RunDir) -> dict:
    """The checkpoint's progress, checked against the recipe (a stage index past the end is damage)."""
    progress = state["progress"]
    stage, step = progress.get("stage"), progress.get("step")
    if stage is None or step is None or stage > len(recipe.stages):
        raise OmnifuseError(
            f"{run.checkpoint / 'state.json'}: progress {progress!r} does not fit the recipe's "
            f"{len(recipe.stages)} stages; the checkpoint is damaged. Start the run again into a new --out"
        )
    return {"stage": stage, "step": step}


def truncate_metrics(path: Path, resume_from: dict | None, console: Console | None = None) -> None:
    """On resume, drop metric lines logged after the checkpoint (they will be recomputed), and any line
    that is not a step record (the line a killed process was writing, or a damaged one)."""
    if not path.is_file():
        return
    if resume_from is None:
        path.unlink()
        return
    keep, dropped = [], 0
    for line in read_text(path, "metrics file").splitlines():
        try:
            rec = json.loads(line)
            at = (int(rec["stage_index"]), int(rec["step"]))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError):
            dropped += bool(line.strip())
            continue
        if at <= (resume_from["stage"], resume_from["step"]):
            keep.append(line)
    if dropped > 1 and console is not None:  # one partial last line is the normal trace of a kill
        console.print(f"[yellow]{path}: {dropped} damaged lines dropped[/yellow]")
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def _same_recipe(saved: str, recipe: Spec) -> bool:
    """Whether a run's saved recipe reads as ``recipe`` (a run started by an older omnifuse keeps some
    keys in their old spelling, e.g. ``objective: generative``; it resumes as the same recipe). The
    ``runtime`` section is not compared: a run may resume on another device, dtype or process count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeDeprecation)
        try:
            parsed = parse_recipe(parse_yaml(saved, "run recipe"))
        except OmnifuseError:
            return False
    if hasattr(recipe, "runtime") and hasattr(parsed, "runtime"):
        parsed = parsed.model_copy(update={"runtime": recipe.runtime})
    return parsed == recipe


def prepare_run_dir(run: RunDir, recipe: Spec, resume: bool) -> bool:
    """Create the run directory, refusing to overwrite an existing run unless resuming it. Returns True
    when ``resume`` finds the run finished and intact: then nothing is to be done and nothing was written."""
    check_out_dir(run.path)
    if run.path.exists() and any(run.path.iterdir()) and not resume:
        raise OmnifuseError(
            f"{run.path} already holds files; nothing was changed. Continue that run with --resume, or "
            "choose another directory with --out"
        )
    if resume and run.recipe_file.is_file():
        saved = read_text(run.recipe_file, "run recipe")
        if saved != dump_recipe(recipe) and not _same_recipe(saved, recipe):
            raise OmnifuseError(
                f"--resume: the recipe differs from the one {run.path} was started with ({run.recipe_file}); "
                "resume with the same recipe and overrides, or start a new run with --out"
            )
        state = run.state()
        if state is not None and state.status == "finished":
            changed = run.changed_files(state)
            if not changed:
                return True
            raise OmnifuseError(
                f"--resume: {run.path} finished training, but {' and '.join(changed)} changed since (the "
                "hashes in status.json differ); nothing was changed. Restore the files, or train again into "
                "a new --out"
            )
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.recipe_file, dump_recipe(recipe))
    return False


def tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OmnifuseError(
            "--tensorboard needs the tensorboard package: .venv/bin/pip install tensorboard "
            "(metrics.jsonl is always written without it)"
        ) from None
    return SummaryWriter(str(folder))


def run_meta(recipe: Recipe, model, placement: Placement, world: World) -> dict:
    """``RUN/run.json``: the base assets, the placeholder counts, where and how many processes trained."""
    return {
        "omnifuse": __version__,
        "base": {
            "llm": recipe.model.llm.name,
            "encoders": {m: s.model_dump(mode="json") for m, s in recipe.model.encoders.items()},
        },
        "tokens_per_item": {m: model.tokens_per_item(m) for m in recipe.model.encoders},
        "placement": {"device": str(placement.device), "dtype": str(placement.dtype).removeprefix("torch.")},
        "processes": world.size,
    }


__all__ = ["checked_progress", "prepare_run_dir", "run_meta", "tensorboard_writer", "truncate_metrics"]
