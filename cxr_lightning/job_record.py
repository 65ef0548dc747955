"""A job's directory and what it records: the resolved config, then results.json or failed.json.

One owner for the files a job leaves, read by training (resume), the multirun's comparison
table (:mod:`cxr_lightning.sweep`) and the report, with one rule for "complete": results.json
exists, is valid JSON and holds :data:`REQUIRED_KEYS`. It is written atomically and last, so
its presence means the job completed.

A full disk cannot leave an empty failure record: the job's start reserves
:data:`FAILURE_RESERVE_BYTES` (``failed.json.reserved``), a failure is written into that
reservation (already allocated: no new blocks needed on ext4, xfs or tmpfs; a copy-on-write file
system such as btrfs or ZFS may still refuse) and renamed to failed.json, and results.json
removes it. A reader of a failed.json that is empty or broken says so and goes on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxr_lightning.integrity import write_atomic

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
CONFIG_FILE = "config_resolved.yaml"
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.csv"
COHORT_FILE = "cohort.csv"
CHECKPOINTS_DIR = "checkpoints"
RESERVED_FILE = FAILED_FILE + ".reserved"
FAILURE_RESERVE_BYTES = 64 * 1024
"""Room kept for failed.json from a job's start on (its traceback is cut to fit)."""
LOCK_FILE = ".lock"
"""A run or sweep directory's lock (:class:`cxr_lightning.sweep.DirectoryLock`)."""
START_FILES: frozenset[str] = frozenset({".hydra", CONFIG_FILE, "train.log", "wandb",
                                         RESERVED_FILE, LOCK_FILE})
"""What a job directory holds before its job starts (Hydra's record, the log, the config, the
failure record's reservation, the lock)."""
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

    @property
    def reserved_path(self) -> Path:
        return self.directory / RESERVED_FILE

    def has_started_before(self) -> bool:
        """Whether an earlier attempt of this job started here (it recorded its config)."""
        return (self.directory / CONFIG_FILE).is_file()

    def start(self, cfg: DictConfig) -> None:
        """Reserve room for a failure record, record the resolved config and clear a previous
        attempt's failure record."""
        write_atomic(self.reserved_path, b" " * FAILURE_RESERVE_BYTES)
        write_atomic(self.directory / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        self.failed_path.unlink(missing_ok=True)

    def write_results(self, results: dict[str, Any]) -> Path:
        """Write results.json atomically (a partial file, then a rename)."""
        missing = [key for key in REQUIRED_KEYS if key not in results]
        if missing:
            raise ValueError(f"results lack {missing}: refusing to mark {self.directory} complete")
        write_atomic(self.results_path, json.dumps(results, indent=2))
        self.reserved_path.unlink(missing_ok=True)
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
        """failed.json: the job's overrides, the error and the traceback being handled, written
        into the room reserved at the start (so a full disk cannot leave it empty) and renamed
        into place. If even that fails, the error is logged and the job goes on failing."""
        record = {"overrides": list(overrides), "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()}
        data = json.dumps(record, indent=2).encode()
        if len(data) > FAILURE_RESERVE_BYTES:  # keep the traceback's end, where the error is
            record["traceback"] = "..." + record["traceback"][-FAILURE_RESERVE_BYTES // 2:]
            record["error"] = record["error"][:FAILURE_RESERVE_BYTES // 4]
            data = json.dumps(record, indent=2).encode()
        try:
            if self.reserved_path.is_file():
                with self.reserved_path.open("r+b") as handle:
                    handle.write(data)
                    handle.truncate(len(data))
                os.replace(self.reserved_path, self.failed_path)
            else:
                write_atomic(self.failed_path, data)
        except OSError as write_error:
            log.error("Could not record the failure of %s in %s (%s); the job failed with %s",
                      self.directory, self.failed_path, write_error, record["error"])

    def read_failure(self) -> dict[str, Any] | None:
        """failed.json's content, or ``None`` when the job recorded no failure. An empty or
        broken record (written by an older version on a full disk) is reported as such, with a
        warning naming it."""
        if not self.failed_path.is_file():
            return None
        try:
            failure = json.loads(self.failed_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            failure = None
            reason = f"{type(error).__name__}: {error}"
        else:
            reason = "not a JSON object"
        if not isinstance(failure, dict):
            log.warning("%s is empty or broken (%s): the job failed, but its record was lost; "
                        "see its train.log", self.failed_path, reason)
            return {"overrides": [], "error": f"unknown: {FAILED_FILE} is empty or broken "
                                              f"({reason}); see train.log"}
        return failure

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
