"""A job's directory and what it records: the resolved config, then results.json or failed.json.

One owner for the files a job leaves, read by training (resume), the multirun's comparison
table (:mod:`cxr_lightning.sweep`) and the report, with one rule for "complete": results.json
exists, is valid JSON and holds :data:`REQUIRED_KEYS`. It is written atomically and last, so
its presence means the job completed.
"""

from __future__ import annotations

import json
import re
import shutil
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
CONFIG_FILE = "config_resolved.yaml"
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.csv"
COHORT_FILE = "cohort.csv"
CHECKPOINTS_DIR = "checkpoints"
START_FILES: frozenset[str] = frozenset({".hydra", CONFIG_FILE, "train.log", "wandb"})
"""What a job directory holds before its job starts (Hydra's record, the log, the config)."""
REQUIRED_KEYS: tuple[str, ...] = ("formulation", "metrics", "members", "predictions")


class IncompleteResultsError(ValueError):
    """A results.json that is not valid JSON or lacks :data:`REQUIRED_KEYS`."""


@dataclass(frozen=True)
class JobRecord:
    """The directory of one job of a run or multirun."""

    directory: Path

    @property
    def name(self) -> str:
        """The directory's name, e.g. ``0_binary`` in a multirun."""
        return self.directory.name

    @property
    def results_path(self) -> Path:
        return self.directory / RESULTS_FILE

    @property
    def failed_path(self) -> Path:
        return self.directory / FAILED_FILE

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    def checkpoint_dir(self, model_name: str) -> Path:
        """Where one model of the job keeps its checkpoints."""
        return self.directory / CHECKPOINTS_DIR / model_name

    def start(self, cfg: DictConfig) -> None:
        """Record the resolved config and clear a previous attempt's failure record."""
        (self.directory / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self.failed_path.unlink(missing_ok=True)

    def write_results(self, results: dict[str, Any]) -> Path:
        """Write results.json atomically (a partial file, then a rename)."""
        missing = [key for key in REQUIRED_KEYS if key not in results]
        if missing:
            raise ValueError(f"results lack {missing}: refusing to mark {self.directory} complete")
        partial = self.results_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(results, indent=2))
        partial.replace(self.results_path)
        return self.results_path

    def read_results(self) -> dict[str, Any] | None:
        """The job's results, ``None`` when it has not completed; an error naming the file when
        results.json is unreadable or incomplete (written by an older version)."""
        if not self.results_path.is_file():
            return None
        try:
            results = json.loads(self.results_path.read_text())
        except json.JSONDecodeError as error:
            raise IncompleteResultsError(
                f"{self.results_path} is not valid JSON ({error}): delete it and re-run the "
                "job") from error
        missing = [key for key in REQUIRED_KEYS if key not in results]
        if missing:
            raise IncompleteResultsError(
                f"{self.results_path} lacks {missing}: it was written by an older version of "
                "cxr_lightning; delete it and re-run the job")
        return results

    def record_failure(self, overrides: Sequence[str], error: BaseException) -> None:
        """failed.json: the job's overrides, the error and the traceback being handled."""
        self.failed_path.write_text(json.dumps({
            "overrides": list(overrides), "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()}, indent=2))

    def read_failure(self) -> dict[str, Any] | None:
        """failed.json's content, or ``None`` when the job recorded no failure."""
        return json.loads(self.failed_path.read_text()) if self.failed_path.is_file() else None

    def disk_use(self) -> int:
        """Bytes of the files under the job directory."""
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    def holds_only_start_files(self) -> bool:
        """Whether the directory holds nothing but what a job's start writes."""
        return {p.name for p in self.directory.iterdir()} <= START_FILES

    def remove(self) -> None:
        """Delete the job directory."""
        shutil.rmtree(self.directory)


def _job_order(record: JobRecord) -> tuple[int, str]:
    """Sort ``2_x`` before ``10_x``: Hydra's job number first, then the name."""
    number = re.match(r"\d+", record.name)
    return (int(number.group()) if number else -1, record.name)


def sweep_jobs(sweep_dir: Path) -> list[JobRecord]:
    """The job directories of a multirun directory (those with a results.json or failed.json),
    in Hydra's job order."""
    directories = {p.parent for name in (RESULTS_FILE, FAILED_FILE)
                   for p in Path(sweep_dir).glob(f"*/{name}")}
    return sorted((JobRecord(d) for d in directories), key=_job_order)
