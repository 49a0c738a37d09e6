"""Progress bars for long work (images rendered, sampled, explained): one place that styles them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def item_progress(description: str, *, total: int, unit: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A bar counting ``unit`` (e.g. images) up to ``total``; yields ``advance(n)``. Disabled: a no-op."""
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
