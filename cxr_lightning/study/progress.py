"""The study's one progress view: current part, jobs done and left, ETA from measured jobs.

Each update is logged (the console) when it changes and written to ``progress.txt`` in the
study directory, which always holds the latest view.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.txt"


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else (
        f"{secs}s")


@dataclass
class Progress:
    """Jobs of the whole study: how many in all, done (before this launch or during it) and the
    measured durations of those completed during it."""

    study_dir: Path
    total_jobs: int
    done: dict[str, int] = field(default_factory=dict)
    """Part -> jobs complete."""
    measured: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _last_seen: float = field(default_factory=time.monotonic)
    _last_view: str = ""

    def eta(self) -> float | None:
        """Seconds left: the jobs left times the mean measured job; None before any. (The
        untimed parts are counted as jobs too: they take seconds to minutes.)"""
        if not self.measured:
            return None
        return (self.total_jobs - sum(self.done.values())) * sum(self.measured) / len(
            self.measured)

    def start_part(self) -> None:
        """A part starts: its first job is measured from now."""
        self._last_seen = time.monotonic()

    def update(self, part: str, part_done: int, part_jobs: int, failed: int = 0,
               timed: bool = True) -> str:
        """Record ``part``'s complete jobs and show the view when it changed. A newly complete
        job of a ``timed`` part (training) is measured from the previous completion or the
        part's start; the cohort and the cache are not jobs like those and are not timed."""
        now = time.monotonic()
        new = part_done - self.done.get(part, part_done)
        if new > 0 and timed:
            self.measured += [(now - self._last_seen) / new] * new
            self._last_seen = now
        self.done[part] = part_done
        eta = self.eta()
        view = (f"part {part}: {part_done}/{part_jobs} jobs done"
                + (f", {failed} failed" if failed else "")
                + f"; study: {sum(self.done.values())}/{self.total_jobs} jobs done, "
                f"{self.total_jobs - sum(self.done.values())} left; ETA "
                + (f"{duration(eta)} (mean of {len(self.measured)} measured jobs)"
                   if eta is not None else "unknown until a job completes"))
        if view != self._last_view:
            self._last_view = view
            log.info("[study] %s", view)
        (self.study_dir / PROGRESS_FILE).write_text(
            f"{view}\nelapsed {duration(now - self.started)}\n")
        return view
