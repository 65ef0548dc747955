"""End of a multirun: the comparison table of every job's test results, with a column per
swept override."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cxr_lightning.findings import FINDINGS
from cxr_lightning.job_record import IncompleteResultsError, sweep_jobs

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


class ComparisonTable(Callback):
    """Hydra callback: after a multirun, log the comparison table and save it as CSV/text; list
    the failed jobs (failed.txt) and end the multirun with exit status 1 when there are any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = comparison_table(sweep_dir)
        if table.empty:
            log.warning("No job under %s wrote results.json; nothing to compare", sweep_dir)
        else:
            table.to_csv(sweep_dir / "comparison.csv", index=False)
            text = table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
            (sweep_dir / "comparison.txt").write_text(text + "\n")
            log.info("Comparison of %d jobs in %s:\n%s", len(table), sweep_dir, text)
        failed = failed_jobs(sweep_dir)
        if not failed.empty:
            text = failed.to_string(index=False)
            (sweep_dir / "failed.txt").write_text(text + "\n")
            log.error(
                "%d job(s) of the multirun in %s failed (the others completed); each job's "
                "failed.json holds its traceback:\n%s\nFix the cause and re-run the same command "
                "with hydra.sweep.dir=%s resume=true", len(failed), sweep_dir, text, sweep_dir)
            raise SystemExit(1)  # Hydra turns a callback's exceptions into warnings
