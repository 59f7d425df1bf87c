"""The progress a study shows on the terminal: trials done, and the requests of the running trial."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

__all__ = ["StudyProgress", "study_progress"]

# The description column is as wide as the longest description ("trial 99999 requests") so that the bars of both
# lines start in one place, and the bar is at most BAR wide: with the counts and the times, a line fits 80 columns.
DESCRIPTION = 20
BAR = 24


class StudyProgress:
    """Two bars: trials of this run (none when the run adds no trials: finals and top-ups only), and requests of
    the trial that is running, shown only while it runs (a trial stopped early leaves no half-filled bar)."""

    def __init__(self, progress: Progress, *, trials: int, requests: int) -> None:
        self._progress = progress
        self._requests_per_trial = requests
        self._trials = progress.add_task("trials", total=trials) if trials > 0 else None
        self._requests = progress.add_task("requests", total=requests, visible=False)

    def trial_started(self, number: int) -> None:
        self._progress.reset(self._requests, total=self._requests_per_trial,
                             description=f"trial {number} requests", visible=True)

    def request_done(self) -> None:
        self._progress.advance(self._requests)

    def trial_measured(self) -> None:
        """The trial's requests are over, all of them or not: its bar goes."""
        self._progress.update(self._requests, visible=False)

    def trial_done(self) -> None:
        if self._trials is not None:
            self._progress.advance(self._trials)


@contextlib.contextmanager
def study_progress(console: Console, *, trials: int, requests: int) -> Iterator[StudyProgress]:
    """Show the bars on ``console`` (stderr: the front table goes to stdout) while the study runs."""
    description = TextColumn("{task.description}", table_column=Column(width=DESCRIPTION, no_wrap=True))
    with Progress(description, BarColumn(bar_width=BAR), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        yield StudyProgress(progress, trials=trials, requests=requests)
