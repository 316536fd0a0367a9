"""Progress display shared by every long-running stage: rich bars, also for work inside Ray tasks.

Stages take a :data:`ProgressFactory`: ``factory(description, total)`` is a context manager yielding
``advance(n)``. In-process that is :func:`progress_bar`; in Ray tasks it is :func:`queued_progress`,
which feeds the driver's :func:`gather_with_progress`, so several tasks share one clean display.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, ContextManager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, "int | None"], ContextManager[Advance]]


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Advance]:
    """Yield ``advance(n)``; draws a rich bar with rate and ETA when ``enabled``."""
    if not enabled:
        yield lambda _n: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None


FLUSH_SECONDS = 0.5


@contextlib.contextmanager
def queued_progress(queue: Any, description: str, total: int | None) -> Iterator[Advance]:
    """Progress of a Ray task, sent to the driver through a Ray queue at most every 0.5 s."""
    queue.put((description, total, 0))
    pending, last = 0, time.monotonic()

    def advance(n: int) -> None:
        nonlocal pending, last
        pending += n
        if time.monotonic() - last >= FLUSH_SECONDS:
            queue.put((description, total, pending))
            pending, last = 0, time.monotonic()

    try:
        yield advance
    finally:
        queue.put((description, total, pending))


def gather_with_progress(refs: list[Any], queue: Any, enabled: bool = True) -> list[Any]:
    """``ray.get(refs)`` while drawing one rich bar per task from the tasks' :func:`queued_progress`."""
    import ray

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False, disable=not enabled) as bar:
        tasks: dict[str, Any] = {}
        remaining = list(refs)
        while remaining:
            _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=FLUSH_SECONDS)
            while not queue.empty():
                description, total, n = queue.get()
                if description not in tasks:
                    tasks[description] = bar.add_task(description, total=total)
                bar.advance(tasks[description], n)
    return ray.get(refs)
