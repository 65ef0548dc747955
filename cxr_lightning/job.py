"""One job of ``cxr-train``: resume, training, the failure record, user errors.

:func:`run_job` is what each Hydra job runs (:mod:`cxr_lightning.train` is the entry point):
it skips a complete job under ``resume=true`` (and refuses one with nothing to resume),
records the resolved config, trains and tests
every model of the formulation (:mod:`cxr_lightning.training`), and on failure writes
``failed.json`` (a sweep goes on) or, for a user error, one line and exit status 2 with no job
directory left behind.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cxr_lightning.config_checks import check_ranges
from cxr_lightning.errors import EXIT_USER_ERROR, UserError, debugging
from cxr_lightning.job_record import CONFIG_FILE, LOCK_FILE, JobRecord
from cxr_lightning.tracking import finish_tracking
from cxr_lightning.training import train_job

log = logging.getLogger(__name__)


def job_overrides() -> list[str]:
    """The job's command-line overrides that define it (``resume`` only says how it runs)."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]


def optimized_value(cfg: DictConfig, results: dict[str, Any]) -> float:
    """The metric the sweeper optimises, ``optimized_metric``, from a job's results."""
    metrics = results["metrics"]
    if cfg.optimized_metric not in metrics:
        raise KeyError(f"optimized_metric={cfg.optimized_metric!r} is not among the job's "
                       f"metrics: {sorted(k for k in metrics if '/' in k)[:20]}...")
    value = metrics[cfg.optimized_metric]
    if value is None or not math.isfinite(value):
        log.warning("optimized_metric=%s is undefined for this job (e.g. every finding's "
                    "validation split holds one class); the job returns NaN, which a sweeper "
                    "records as a failed trial", cfg.optimized_metric)
        return math.nan
    return float(value)


def run_job(cfg: DictConfig) -> float:
    """One job: data, every model of the formulation, test metrics, results.json. Returns the
    job's ``optimized_metric``. A failure is recorded in failed.json; in a multirun the job then
    returns NaN (Optuna marks the trial failed) and the sweep goes on, a single run re-raises."""
    record = JobRecord(Path(HydraConfig.get().runtime.output_dir))
    overrides = job_overrides()
    done = record.read_results() if cfg.resume else None
    if done is not None:
        if done.get("overrides") != overrides:
            raise ValueError(f"resume=true: {record.directory} holds the results of overrides "
                             f"{done.get('overrides')}, not {overrides}; re-run the sweep with "
                             "the same arguments or in a new directory")
        log.info("resume=true: %s is complete (results.json); skipping it", record.directory)
        return optimized_value(cfg, done)
    try:
        check_ranges(cfg)
        if cfg.resume and not record.has_started_before():
            check_something_to_resume(record)
        if rank_zero_only.rank == 0:
            record.start(cfg)
        results = train_job(cfg, record, overrides)
    except UserError as error:  # every job of the launch would fail alike: it ends here
        if debugging():
            raise
        log.error("%s", error)
        finish_tracking(failed=True)
        remove_litter(record)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as error:  # a failed job is recorded; the sweep goes on
        if rank_zero_only.rank != 0:
            raise
        log.exception("Job %s failed", record.directory)
        record.record_failure(overrides, error)
        finish_tracking(failed=True)
        if HydraConfig.get().mode == RunMode.RUN:
            raise
        return float("nan")
    finish_tracking()
    if results is None:  # a DDP rank other than zero
        return float("nan")
    log.info("Job %s holds %.1f MB (checkpoints.keep=%s)", record.directory,
             record.disk_use() / 1e6, cfg.checkpoints.keep)
    return optimized_value(cfg, results)


def check_something_to_resume(record: JobRecord) -> None:
    """``resume=true`` for a job that never started here. In a sweep directory holding other
    jobs' attempts it starts from the beginning, with a warning naming its directory (the
    sweep was stopped before it); anywhere else there is nothing to resume (a new directory,
    most likely a forgotten ``hydra.run.dir``/``hydra.sweep.dir``): a :class:`UserError`."""
    others = [d for d in record.directory.parent.iterdir()
              if d.is_dir() and d != record.directory and JobRecord(d).has_started_before()]
    if HydraConfig.get().mode == RunMode.MULTIRUN and others:
        log.warning("resume=true: %s holds no earlier attempt of this job; it starts from the "
                    "beginning", record.directory)
        return
    option = "hydra.sweep.dir" if HydraConfig.get().mode == RunMode.MULTIRUN else "hydra.run.dir"
    raise UserError(f"resume=true: nothing to resume in {record.directory} (no {CONFIG_FILE}, "
                    f"checkpoints or results of an earlier attempt): pass the directory to "
                    f"resume, {option}=<it>, or drop resume=true")


def remove_litter(record: JobRecord) -> None:
    """Delete a job directory that holds nothing but what its start wrote (and, in a multirun,
    a sweep directory left empty by that): a launch refused for a user error leaves no trace."""
    if rank_zero_only.rank != 0 or not record.holds_only_start_files():
        return
    record.remove()
    sweep_dir = record.directory.parent
    if (HydraConfig.get().mode == RunMode.MULTIRUN
            and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml", LOCK_FILE}):
        shutil.rmtree(sweep_dir)
