"""``omnifuse export``: a trained run as a Hugging Face folder, in one of three formats (one module
each, each an :class:`~omnifuse.export.common.ExportFormat`):

- ``hf`` (the default, every generate recipe but video for now): omnifuse's own classes, registered with transformers'
  Auto classes by ``import omnifuse.hf``;
- ``llava`` (recipes shaped like LLaVA): a folder that plain ``LlavaForConditionalGeneration`` loads
  without omnifuse, the format vLLM and TGI serve;
- ``llm``: the language model alone, a plain causal-LM folder.

Every export writes into a temporary folder beside ``--out`` and renames it into place at the end, so an
interrupted export never leaves a half-written folder under the name a user would load.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omnifuse.errors import OmnifuseError
from omnifuse.export.card import model_card
from omnifuse.export.common import ExportFormat, ExportOptions, Loaded
from omnifuse.export.hf import HFFormat
from omnifuse.export.llava import LlavaFormat
from omnifuse.export.llm import LLMFormat
from omnifuse.llm.grounding_tokens import bake_added_tokens
from omnifuse.models.stages import unload_lora
from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (HFFormat(), LlavaFormat(), LLMFormat())}
DEFAULT_FORMAT = "hf"


def export_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise OmnifuseError(
            f"unknown export format {name!r}; choose one of {', '.join(FORMATS)} "
            "(hf, the default: any generate recipe without video, loaded through transformers' Auto classes after "
            "`import omnifuse.hf`; llava: LLaVA-shaped recipes, plain transformers; llm: the language model alone)"
        )
    return FORMATS[name]


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder without ``--force`` (before loading)."""
    if out.exists() and not out.is_dir():
        raise OmnifuseError(f"--out {out} is a file; give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OmnifuseError(
            f"--out {out} already exists and is not empty; choose another folder, or pass --force to "
            "replace it"
        )
    if not out.parent.is_dir():
        raise OmnifuseError(f"--out {out}: its parent folder {out.parent} does not exist")


def load_for_export(
    run: RunDir, options: ExportOptions, parts: dict | None = None, progress: bool = True
) -> Loaded:
    """The run's model on the CPU in float32, LoRA folded into the base weights when asked."""
    from omnifuse.tasks.generate.load import load_model

    recipe, model, processor = load_model(run, progress=progress, parts=parts, device="cpu", dtype="float32")
    bake_added_tokens(model.llm)  # grounding tokens' rows into a resized plain embedding and head
    merged = not recipe.lora_components()
    if options.merge_lora and not merged:
        unload_lora(model, merge=True)
        merged = True
    return Loaded(run, recipe, model, processor, merged)


def export_run(
    run_dir: Path,
    out: Path,
    fmt: str = DEFAULT_FORMAT,
    options: ExportOptions | None = None,
    force: bool = False,
    command: str = "",
    parts: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write the trained run at ``run_dir`` into ``out`` in format ``fmt``; returns ``out``.
    Everything that can be refused is checked before the model loads."""
    options = options or ExportOptions()
    writer = export_format(fmt)
    run = RunDir(run_dir).require_trained()
    recipe = run.recipe()
    if not isinstance(recipe, Recipe):
        raise OmnifuseError(
            f"{run_dir} is a {getattr(recipe, 'task', type(recipe).__name__)} run; `omnifuse export` writes "
            "language-model runs (task: generate). A classifier's or alignment model's weights are "
            f"already a safetensors file: {run.weights_file}"
        )
    check_out(out, force)
    writer.check(recipe, options)
    loaded = load_for_export(run, options, parts, progress)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        snippet = writer.write(loaded, tmp, options).replace("DIR", repr(str(out)))
        (tmp / "README.md").write_text(model_card(loaded, fmt, snippet, command), encoding="utf-8")
        _publishable(tmp)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publishable(folder: Path) -> None:
    """Files readable by everyone (as the umask allows): some writers create 0600 temp files."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (--force) is moved aside first and deleted after."""
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload an exported folder with ``huggingface_hub``; an unreachable hub or a missing token is one
    paragraph saying so, and the folder stays where it was written."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="omnifuse export")
    except Exception as exc:  # huggingface_hub raises many kinds (network, auth, HTTP): all end here
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
        raise OmnifuseError(
            f"could not push {folder} to the hub repository {repo!r} ({reason}). The export itself is "
            f"complete in {folder}; on a machine that reaches the hub, log in with `hf auth login` and run "
            f"`hf upload {repo} {folder}`"
        ) from None
    return str(getattr(commit, "commit_url", commit))


__all__ = ["DEFAULT_FORMAT", "FORMATS", "ExportOptions", "export_format", "export_run", "push_to_hub"]
