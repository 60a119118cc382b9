"""The run directory: the unit users keep.

::

    RUN/recipe.yaml          the fully resolved recipe (defaults filled in)
    RUN/run.json             base assets it builds on, omnifuse version, which parameters changed
    RUN/status.json          running | finished | failed, written atomically; when finished, the sha256 of
                             recipe.yaml and model.safetensors, which every verb that loads the run checks
    RUN/model.safetensors    the changed parameters only (connectors, LoRA, anything trained fully)
    RUN/pruning.safetensors  the LLM's MLP channels a stage kept (``stages.*.prune``), if one pruned
    RUN/checkpoint/          last training checkpoint (weights, optimizer, RNG, progress) for --resume
    RUN/metrics.jsonl        one line per optimizer step
    RUN/eval.json            last evaluation; RUN/report.md with plots
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from omnifuse.atomic import atomic_write_text, sha256_file
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import Recipe, parse_recipe
from omnifuse.untrusted import json_fields, parse_yaml, read_json, read_text

STATUSES = ("running", "finished", "failed")
HASHED = ("recipe.yaml", "model.safetensors")  # what a finished run's status vouches for


@dataclass(frozen=True)
class RunState:
    status: str  # one of STATUSES
    updated: float  # time.time() of the last change
    sha256: dict[str, str] = field(default_factory=dict)  # file name → hash, when finished
    error: str | None = None  # why it failed


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def meta_file(self) -> Path:
        return self.path / "run.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def weights_file(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def pruning_file(self) -> Path:
        """The kept MLP channels of a run a stage pruned (omnifuse.models.prune); absent otherwise."""
        return self.path / "pruning.safetensors"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def exists(self) -> bool:
        return self.recipe_file.is_file()

    # -------------------------------------------------------------- status
    def state(self) -> RunState | None:
        """The recorded status (None for a run directory written before statuses existed)."""
        if not self.status_file.exists():
            return None
        where = f"{self.status_file} (the run's status)"
        raw = json_fields(read_json(self.status_file, "run status"), where, {"status": str, "updated": float})
        if raw["status"] not in STATUSES:
            raise OmnifuseError(f"{where}: status {raw['status']!r} is not one of {', '.join(STATUSES)}")
        hashes = raw.get("sha256") or {}
        if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
            raise OmnifuseError(f"{where}: 'sha256' is damaged")
        error = raw.get("error")
        return RunState(
            raw["status"], float(raw["updated"]), dict(hashes), error if isinstance(error, str) else None
        )

    def set_state(self, status: str, error: str | None = None) -> RunState:
        hashes = {}
        if status == "finished":
            hashes = {name: sha256_file(self.path / name) for name in HASHED if (self.path / name).is_file()}
        state = RunState(status, round(time.time(), 3), hashes, error)
        body = {"status": status, "updated": state.updated, "sha256": hashes}
        if error is not None:
            body["error"] = error
        atomic_write_text(self.status_file, json.dumps(body, indent=2) + "\n")
        return state

    def changed_files(self, state: RunState) -> list[str]:
        """The files of a finished run whose content no longer matches the hash recorded at its end."""
        changed = []
        for name, digest in state.sha256.items():
            path = self.path / name
            if not path.is_file() or sha256_file(path) != digest:
                changed.append(name)
        missing = [n for n in HASHED if n not in state.sha256]
        return changed + missing

    @contextmanager
    def training(self) -> Iterator[None]:
        """Marks the run running, then finished (with hashes) or failed (with the reason). A process
        killed outright leaves "running", which --resume continues."""
        self.set_state("running")
        try:
            yield
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc}" or type(exc).__name__
            try:
                self.set_state("failed", error=reason)
            except OSError:  # the disk that failed the run may fail this too; the first error matters
                pass
            raise
        self.set_state("finished")

    def intact_finished(self) -> bool:
        """Whether training finished and its weights and recipe are unchanged since."""
        state = self.state()
        return state is not None and state.status == "finished" and not self.changed_files(state)

    def require_trained(self) -> RunDir:
        """Refuse, with what to do, a run that is missing, unfinished, failed or changed since training."""
        if not self.path.is_dir():
            raise OmnifuseError(
                f"run directory {self.path} does not exist; train one with `omnifuse train RECIPE --out {self.path}`"
            )
        if not self.recipe_file.is_file():
            raise OmnifuseError(f"{self.path} is not an omnifuse run directory (no recipe.yaml in it)")
        resume = f"continue it with `omnifuse train RECIPE --out {self.path} --resume`"
        state = self.state()
        if state is not None and state.status == "failed":
            raise OmnifuseError(
                f"training of {self.path} failed ({state.error}); fix the cause, then {resume}"
            )
        if state is not None and state.status == "running":
            raise OmnifuseError(
                f"training of {self.path} has not finished (it is running, or was interrupted); {resume}"
            )
        if not self.weights_file.is_file():
            hint = f" (training was interrupted: {resume})"
            raise OmnifuseError(
                f"{self.path} holds no trained weights yet{hint if self.checkpoint.exists() else ''}"
            )
        if state is not None and (changed := self.changed_files(state)):
            raise OmnifuseError(
                f"{self.path}: {' and '.join(changed)} changed since training finished (its sha256 differs from "
                f"the one in {self.status_file.name}); the run directory is damaged or was edited. Restore the "
                "files, or train the recipe again into a new --out"
            )
        return self

    def recipe(self) -> Recipe:
        source = str(self.recipe_file)
        return parse_recipe(parse_yaml(read_text(self.recipe_file, "run recipe"), source), source)
