"""Progress of long tasks (loading, saving) as a `tqdm` bar on stderr that appears only once a
task has run for a second; callers report `(done, total, label)`."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Union

ProgressFn = Callable[[int, int, str], None]


class ProgressBar:
    """A ProgressFn drawing a tqdm bar titled `title`, closed when done reaches total."""

    def __init__(self, title: str, delay: float = 1.0) -> None:
        self.title = title
        self.delay = delay
        self._bar: Any = None

    def __call__(self, done: int, total: int, label: str = "") -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.title, delay=self.delay, unit="tensor", leave=True, file=sys.stderr)
        self._bar.set_postfix_str(label[:40], refresh=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None


def resolve(progress: Union[None, bool, ProgressFn], title: str) -> Optional[ProgressFn]:
    """None: a bar when stderr is a terminal; True: always a bar; False: none; callable: itself."""
    if callable(progress):
        return progress
    if progress is None:
        progress = sys.stderr.isatty()
    return ProgressBar(title) if progress else None
