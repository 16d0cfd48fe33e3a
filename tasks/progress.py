"""Terminal progress bars for the long stages when the CLI runs in a terminal.

The CLI sets ``DEEPSSIM_PROGRESS=1`` when stderr is a TTY; tasks then show a tqdm bar
(counts only, no names).  Under a scheduler or in tests nothing is printed.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

ProgressFn = Callable[[int, int], None]


@contextmanager
def console_progress(label: str, unit: str = "img", also: ProgressFn | None = None) -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total)`` callback that drives a bar (when enabled) and
    forwards to ``also`` (e.g. a Prefect progress artifact)."""
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if os.environ.get("DEEPSSIM_PROGRESS") == "1":
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
            bar.update(done - bar.n)
        if also is not None:
            also(done, total)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
