"""Train, test and record one formulation per job: ``python -m cxr_lightning.train``.

``python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass`` runs the three
formulations as a Hydra multirun and ends with a comparison table. Without MIMIC-CXR configured
(``data.root=...`` or the environment variable ``MIMIC_CXR_ROOT``) the ``preset=sample`` overlay
is selected: the embedded MIMIC-CXR-format sample with a small, fast model. Otherwise the base
config is the study's: ResNet152 at 512x512, ImageNet weights.

Every job writes ``config_resolved.yaml`` first, then ``results.json`` when it completes, or
``failed.json`` (the error and its traceback) when it fails: a failed job is recorded and the
rest of the sweep goes on. With ``resume=true``, a job whose ``results.json`` is complete is
skipped. Under DDP every rank trains; rank zero alone predicts and writes.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cxr_lightning import preset, resolvers  # noqa: F401  (registers the config's resolvers)
from cxr_lightning.console import quiet_console
from cxr_lightning.errors import EXIT_USER_ERROR, UserError, debugging
from cxr_lightning.job_record import JobRecord
from cxr_lightning.tracking import finish_tracking
from cxr_lightning.training import check_weights, train_job

log = logging.getLogger(__name__)

# The configuration: conf/ beside the package in a checkout, cxr_lightning/conf in an install.
PROJECT_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_PATH = (str(PROJECT_CONF_DIR) if (PROJECT_CONF_DIR / "train.yaml").is_file()
               else "pkg://cxr_lightning.conf")


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
    if rank_zero_only.rank == 0:
        record.start(cfg)
    try:
        check_weights(cfg)
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


def remove_litter(record: JobRecord) -> None:
    """Delete a job directory that holds nothing but what its start wrote (and, in a multirun,
    a sweep directory left empty by that): a launch refused for a user error leaves no trace."""
    if rank_zero_only.rank != 0 or not record.holds_only_start_files():
        return
    record.remove()
    sweep_dir = record.directory.parent
    if (HydraConfig.get().mode == RunMode.MULTIRUN
            and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}):
        shutil.rmtree(sweep_dir)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra entry point (one job of a run or multirun)."""
    quiet_console()  # after Hydra has configured the job's logging
    return run_job(cfg)


def main() -> None:
    """The command: Hydra, with ``preset=auto`` reading the command line (:mod:`preset`)."""
    preset.use_command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
