"""Progress of the long commands (prepare, train, synthesize, evaluate, study make): rich's bars in a
terminal; elsewhere (a log file, CI, SLURM, nohup) plain lines in one format for every command,

    train crn: 120/400 (30%) | loss 12.3 | 5.1 img/s | 0:01:02 elapsed | ETA 0:02:30

one per task every ``CRN_PROGRESS_INTERVAL_S`` seconds (default 30; a display setting, not an experiment
setting, so it lives in the environment rather than params.yaml), and one when the task finishes.
"""

from __future__ import annotations

import datetime as dt
import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DEFAULT_INTERVAL_S = 30.0


def _clock(seconds: float | None) -> str:
    return "?" if seconds is None else str(dt.timedelta(seconds=int(seconds)))


class StageProgress(Progress):
    """A rich ``Progress`` whose tasks may carry a ``status`` field (e.g. "loss 12.3 | 5.1 img/s").
    Outside a terminal it draws nothing and prints plain lines instead (module docstring); with
    ``disable`` (e.g. a non-zero torchrun rank) it says nothing at all."""

    def __init__(self, console: Console, *, disable: bool = False, interval_s: float | None = None):
        self.plain = not console.is_terminal and not disable
        super().__init__(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=disable or self.plain,
        )
        self.interval_s = interval_s if interval_s is not None else float(
            os.environ.get("CRN_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S)
        )
        self._printed: dict[TaskID, float] = {}

    def add_task(self, description: str, *args, status: str = "", **kwargs) -> TaskID:
        task = super().add_task(description, *args, status=status, **kwargs)
        self._printed[task] = time.monotonic()
        return task

    def update(self, task_id: TaskID, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def line(self, task_id: TaskID) -> str:
        """The task's plain progress line."""
        task = next(t for t in self.tasks if t.id == task_id)
        done = int(task.completed)
        total = f"/{int(task.total)} ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        status = f" | {task.fields['status']}" if task.fields.get("status") else ""
        remaining = "done" if task.finished else f"ETA {_clock(task.time_remaining)}"
        return f"{task.description}: {done}{total}{status} | {_clock(task.elapsed)} elapsed | {remaining}"

    def _report(self, task_id: TaskID) -> None:
        if not self.plain:
            return
        task = next(t for t in self.tasks if t.id == task_id)
        now = time.monotonic()
        last = self._printed.get(task_id)
        if task.finished and last == -1.0:  # its final line is out
            return
        if task.finished or now - last >= self.interval_s:
            self._printed[task_id] = -1.0 if task.finished else now
            self.console.print(self.line(task_id), highlight=False, markup=False, soft_wrap=True)
