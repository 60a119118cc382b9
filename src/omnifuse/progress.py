"""One progress bar style for every long step (conversion, data preparation, training, evaluation)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress, task) -> None:
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields: float) -> None:
        info = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
        self._p.update(self._t, advance=n, info=info)

    def log(self, text: str) -> None:
        """A line printed above the bar (or alone when the bar is disabled)."""
        self._p.console.print(text)


@contextmanager
def progress_bar(
    description: str, total: int | None, enabled: bool = True, completed: int = 0
) -> Iterator[_Bar]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task)


def peak_rss_gb() -> float:
    """The most resident memory this process has used so far, in GB (``ru_maxrss`` is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
