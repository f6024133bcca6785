"""A minimal progress bar on stderr that appears only once a task has run for a second."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO, Union

ProgressFn = Callable[[int, int, str], None]


class ProgressBar:
    """Call with (done, total, label). Draws nothing for tasks shorter than `delay` seconds."""

    def __init__(self, title: str, stream: Optional[TextIO] = None, delay: float = 1.0, width: int = 30) -> None:
        self.title = title
        self.stream = stream or sys.stderr
        self.delay = delay
        self.width = width
        self.start = time.monotonic()
        self.drawn = False

    def __call__(self, done: int, total: int, label: str = "") -> None:
        if time.monotonic() - self.start < self.delay and done < total:
            return
        if not self.drawn and done >= total and time.monotonic() - self.start < self.delay:
            return
        frac = done / total if total else 1.0
        bar = "#" * int(frac * self.width)
        self.stream.write(f"\r{self.title} [{bar:<{self.width}}] {done}/{total} {label[:40]:<40}")
        self.drawn = True
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def resolve(progress: Union[None, bool, ProgressFn], title: str) -> Optional[ProgressFn]:
    """None: a bar when stderr is a terminal; True: always a bar; False: none; callable: itself."""
    if callable(progress):
        return progress
    if progress is None:
        progress = sys.stderr.isatty()
    return ProgressBar(title) if progress else None
