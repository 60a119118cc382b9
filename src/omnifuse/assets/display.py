"""What a one-time asset conversion shows while it runs: a spinner + bar + elapsed-time display of its
steps (on stderr), with transformers' own progress bars and warnings hidden for the duration."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def conversion_steps(description: str, total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner + bar + elapsed-time display; yields ``step(label)`` which finishes the current step
    and names the next one."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[step]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, step="")
        started = False

        def step(label: str) -> None:
            nonlocal started
            progress.update(task, advance=1 if started else 0, step=label)
            started = True

        yield step
        progress.update(task, completed=total, step="done")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own tqdm bars/warnings while our progress display runs."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # The GGUF reader calls tqdm directly (not through transformers' switch), which garbles our live
    # display; swap in a pass-through for the duration of the conversion and restore it afterwards.
    gguf_utils = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = _no_bar
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _no_bar(iterable=None, *args, **kwargs):
    return iterable


__all__ = ["conversion_steps", "quiet_transformers"]
