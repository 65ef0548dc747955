"""A launch's directory: one launch writes it at a time; at a multirun's end, the comparison
table of every job's test results (a column per swept override) and the list of those that
failed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cxr_lightning.errors import EXIT_USER_ERROR, BusyError, debugging
from cxr_lightning.findings import FINDINGS
from cxr_lightning.integrity import exclusive_lock, write_atomic
from cxr_lightning.job_record import LOCK_FILE, IncompleteResultsError, sweep_jobs

log = logging.getLogger(__name__)

TABLE_METRICS: tuple[str, ...] = (
    *(f"test/{m}/{f}" for f in FINDINGS for m in ("auroc", "acc")),
    "train/epochs", "train/total_time_s", "train/epoch_time_s",
)


def override_choices(overrides: Sequence[str]) -> dict[str, str]:
    """``key -> value`` of Hydra command-line overrides (Hydra's own parser): e.g.
    ``model/optimizer=sgd`` -> ``{"model/optimizer": "sgd"}``."""
    return {o.key_or_group: str(o.value())
            for o in OverridesParser.create().parse_overrides(list(overrides))}


def comparison_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per completed job under ``sweep_dir`` (its results.json): ``job``,
    ``formulation``, a column per swept override (one whose value differs between the jobs,
    from results.json's ``overrides``, in first-seen order), then the metrics. A results.json
    that is unreadable or incomplete is left out with a warning naming it."""
    rows, choices = [], []
    for job in sweep_jobs(sweep_dir):
        try:
            results = job.read_results()
        except IncompleteResultsError as error:
            log.warning("%s", error)
            continue
        if results is not None:
            rows.append({"job": job.name, "formulation": results["formulation"],
                         **{k: results["metrics"].get(k) for k in TABLE_METRICS}})
            choices.append(override_choices(results.get("overrides") or []))
    keys = [k for k in dict.fromkeys(k for job in choices for k in job)
            if k != "formulation" and len({job.get(k, "") for job in choices}) > 1]
    for row, job in zip(rows, choices, strict=True):
        row.update({k: job.get(k, "") for k in keys})
    return pd.DataFrame(rows, columns=["job", "formulation", *keys, *TABLE_METRICS])


def failed_jobs(sweep_dir: Path) -> pd.DataFrame:
    """One row per job under ``sweep_dir`` that recorded a failure (its failed.json)."""
    rows = [{"job": job.name, **{k: v for k, v in failure.items() if k in ("overrides", "error")}}
            for job in sweep_jobs(sweep_dir) if (failure := job.read_failure()) is not None]
    return pd.DataFrame(rows, columns=["job", "overrides", "error"])


class DirectoryLock(Callback):
    """Hydra callback: a run or sweep directory is written by one launch at a time.

    The launch holds an exclusive ``flock`` on the directory's ``.lock`` from before Hydra
    writes anything there until it ends; a second launch into a busy directory (two sweeps
    with one ``hydra.sweep.dir``, a run re-launched with ``hydra.run.dir`` while it runs) is
    refused with one line and exit status 2, and touches nothing. DDP ranks other than zero
    share their launch's directory and take no lock.
    """

    def __init__(self) -> None:
        self._held = ExitStack()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._hold(Path(config.hydra.run.dir), "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._hold(Path(config.hydra.sweep.dir), "sweep")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._held.close()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._held.close()

    def _hold(self, directory: Path, kind: str) -> None:
        if rank_zero_only.rank != 0:
            return
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._held.enter_context(exclusive_lock(
                directory / LOCK_FILE, wait=False, holder=f"the {kind} directory {directory}"))
        except BusyError as error:
            if debugging():
                raise
            log.error("%s", error)
            raise SystemExit(EXIT_USER_ERROR) from None  # Hydra warns on a callback's Exception


class ComparisonTable(Callback):
    """Hydra callback: after a multirun, log the comparison table and save it as CSV/text; list
    the failed jobs (failed.txt) and end the multirun with exit status 1 when there are any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = comparison_table(sweep_dir)
        if table.empty:
            log.warning("No job under %s wrote results.json; nothing to compare", sweep_dir)
        else:
            text = table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
            log.info("Comparison of %d jobs in %s:\n%s", len(table), sweep_dir, text)
            _save(sweep_dir / "comparison.csv", table.to_csv(index=False))
            _save(sweep_dir / "comparison.txt", text + "\n")
        failed = failed_jobs(sweep_dir)
        if not failed.empty:
            text = failed.to_string(index=False)
            _save(sweep_dir / "failed.txt", text + "\n")
            log.error(
                "%d job(s) of the multirun in %s failed (the others completed); each job's "
                "failed.json holds its traceback:\n%s\nFix the cause and re-run the same command "
                "with hydra.sweep.dir=%s resume=true", len(failed), sweep_dir, text, sweep_dir)
            raise SystemExit(1)  # Hydra turns a callback's exceptions into warnings


def _save(path: Path, text: str) -> None:
    """Write a summary file atomically; on a full disk, say so (the log holds its content)."""
    try:
        write_atomic(path, text)
    except OSError as error:
        log.error("Could not write %s (%s); its content is in the log above", path, error)
