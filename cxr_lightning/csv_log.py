"""A CSV training log that a resumed run continues: every epoch once, nothing deleted.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a new process opens the same
log directory, so a run resumed with ``resume=true`` would lose the epochs before the
interruption. :class:`ResumableCSVLogger` keeps them: the rows the interrupted process logged
before its checkpoint stay, those it logged after it (the resumed run logs them again, with
the same steps) are replaced.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class ContinuedExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer that reads an existing ``metrics.csv`` instead of deleting it.

    The earlier rows are written back at the first save, without those whose ``step`` is at or
    after the first step this process logs: a resumed run restarts from its checkpoint, so
    those rows were logged after the checkpoint and are logged again. The file is replaced
    atomically, so an interruption at any moment leaves either the old or the new log.
    """

    def __init__(self, log_dir: str) -> None:
        self.earlier: list[dict[str, str]] | None = None
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            self.earlier = list(reader)
            self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        """Write the rows logged since the last save (the first save of a continued log: the
        earlier rows before this process's first step, then these)."""
        if self.earlier is None or not self.metrics:
            super().save()
            return
        first_step = self.metrics[0]["step"]
        rows: list[dict[str, Any]] = [r for r in self.earlier if int(r["step"]) < first_step]
        rows += self.metrics
        self._record_new_keys()
        partial = self.metrics_file_path + ".partial"
        with self._fs.open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(partial, self.metrics_file_path)
        self.earlier = None
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues an existing log (:class:`ContinuedExperimentWriter`) and
    writes every row as it is logged (``flush_logs_every_n_steps=1``), so the file on disk
    holds at least what the last checkpoint covers when a run is killed."""

    def __init__(self, *args: Any, flush_logs_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedExperimentWriter(log_dir=self.log_dir)
        return self._experiment
