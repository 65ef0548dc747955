"""A sweep's jobs as the report sees them: each job's results.json and its distinguishing overrides.

A job is described by the Hydra overrides that set it apart from the other jobs of its sweep
(read from ``<job>/.hydra/overrides.yaml``, else from the flattened resolved ``config`` of
results.json). Jobs that differ only in a replicate key (``seed``) share a *setting*, and the
report averages over them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from cxr_lightning.job_record import RESULTS_FILE, JobRecord, sweep_jobs
from cxr_lightning.sweep import override_choices

log = logging.getLogger(__name__)

REPLICATE_KEYS: frozenset[str] = frozenset({"seed"})
"""Overrides whose values are replicates of one setting: the report averages over them."""
BOOKKEEPING_PREFIXES: tuple[str, ...] = ("logger.", "paths.")
"""Config keys that name or place a job without changing what it trains (config fallback)."""


@dataclass(frozen=True)
class JobResult:
    """One completed job of a sweep, read from its results.json."""

    name: str
    """The job's directory name, e.g. ``0_binary``."""
    path: Path
    formulation: str
    metrics: dict[str, Any]
    members: list[dict[str, Any]]
    config: dict[str, Any]
    predictions: pd.DataFrame
    """Test split, one row per image: ids, labels (0/1, NaN when masked), ``{finding}_prob``."""
    choices: dict[str, str]
    """What configured this job: its Hydra overrides (``key -> value``), else its flat config."""


def completed_jobs(sweep_dir: Path) -> list[JobRecord]:
    """The jobs of a sweep directory that wrote results.json, in job order; an error naming the
    directory if there are none."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory: pass a multirun directory "
                                "such as outputs/multiruns/<timestamp>")
    jobs = [job for job in sweep_jobs(sweep_dir) if job.results_path.is_file()]
    if not jobs:
        raise FileNotFoundError(
            f"No job under {sweep_dir} has a {RESULTS_FILE} (expected "
            f"{sweep_dir}/<num>_<formulation>/{RESULTS_FILE}): the sweep has not completed a job, "
            "or this is not a multirun directory")
    return jobs


def hydra_overrides(job_dir: Path) -> dict[str, str] | None:
    """``key -> value`` of the job's ``.hydra/overrides.yaml`` (Hydra's own parser), or None."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return override_choices(OmegaConf.to_container(OmegaConf.load(path)) or [])


def flat_config(config: dict[str, Any]) -> dict[str, str]:
    """A resolved config as dotted ``key -> value`` strings, bookkeeping keys (run names, paths)
    left out: the fallback for a job without ``.hydra/overrides.yaml``."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}
    return {key: str(value) for key, value in flat.items()
            if not key.startswith(BOOKKEEPING_PREFIXES)}


def load_job(job: JobRecord) -> JobResult:
    """Read one job's results.json; a clear error naming the file when it is incomplete."""
    results = job.read_results()
    if results is None:
        raise FileNotFoundError(f"{job.results_path} does not exist: the job has not completed")
    config = results.get("config") or {}
    overrides = hydra_overrides(job.directory)
    return JobResult(
        name=job.name,
        path=job.results_path,
        formulation=results["formulation"],
        metrics=results["metrics"],
        members=results["members"],
        config=config,
        predictions=pd.DataFrame(results["predictions"]),
        choices=overrides if overrides is not None else flat_config(config),
    )


def load_sweep(sweep_dir: Path) -> list[JobResult]:
    """Every completed job of a sweep directory, in job order."""
    records = completed_jobs(sweep_dir)
    jobs = [load_job(r) for r in tqdm(records, desc=f"Reading {Path(sweep_dir).name}", unit="job")]
    log.info("Read %d jobs from %s", len(jobs), sweep_dir)
    return jobs


def distinguishing_keys(jobs: list[JobResult]) -> list[str]:
    """The overrides (or config keys) whose values differ between the jobs, in first-seen order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.choices))
    return [k for k in keys if len({job.choices.get(k) for job in jobs}) > 1]


def setting_label(job: JobResult, keys: list[str]) -> str:
    """The job's setting: its formulation and distinguishing overrides, replicate keys left out."""
    parts = [f"{k}={job.choices.get(k, '')}" for k in keys
             if k not in REPLICATE_KEYS and k != "formulation" and not k.startswith("formulation.")]
    return " ".join([job.formulation, *parts])


def describe_jobs(jobs: list[JobResult]) -> pd.DataFrame:
    """One row per job: ``job``, ``formulation``, ``setting`` and each distinguishing override."""
    keys = distinguishing_keys(jobs)
    return pd.DataFrame([{"job": job.name, "formulation": job.formulation,
                          "setting": setting_label(job, keys),
                          **{k: job.choices.get(k, "") for k in keys}} for job in jobs])


def default_multiruns_dir(launch_dir: Path = Path(".")) -> Path:
    """Where sweeps go by default (the ``paths`` config): ``$CXR_LIGHTNING_HOME/outputs/multiruns``,
    else ``outputs/multiruns`` under the directory training was launched from."""
    return Path(os.environ.get("CXR_LIGHTNING_HOME", launch_dir)) / "outputs" / "multiruns"


def newest_sweep(multiruns_dir: Path | None = None) -> Path:
    """The most recently started sweep (newest ``multirun.yaml``) under ``multiruns_dir``."""
    root = Path(multiruns_dir) if multiruns_dir is not None else default_multiruns_dir()
    started = list(root.glob("**/multirun.yaml")) if root.is_dir() else []
    if not started:
        raise FileNotFoundError(f"No sweep under {root}: run one (make sweep, or python -m "
                                "cxr_lightning.train -m ...) or pass the sweep directory")
    return max(started, key=lambda p: p.stat().st_mtime).parent
