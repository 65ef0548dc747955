"""The report's tables, as DataFrames built from a sweep's jobs (no drawing, no formatting).

Column names are results.json metric keys (``test/acc/edema``); a 95% CI, when the job's
metrics hold one, is ``{key}_ci_low`` / ``{key}_ci_high``. Summaries over the jobs of one setting
add ``{key}_sd`` (sample standard deviation across runs) and ``runs``.
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from cxr_lightning.evaluation.metrics import finding_metrics
from cxr_lightning.findings import FINDINGS
from cxr_lightning.report.load import JobResult, describe_jobs

log = logging.getLogger(__name__)

CI_SUFFIXES: tuple[str, str] = ("_ci_low", "_ci_high")
DISCORDANT_SUBSET = "test_discordant"
"""Test images with both labels known and exactly one finding present (evaluation.subgroups)."""
TRAINING_METRICS: tuple[str, ...] = ("train/epochs", "train/epoch_time_s", "train/total_time_s")
STAGE_COLUMNS: tuple[str, ...] = ("stage", "start_epoch", "blocks", "epochs", "best_epoch")
CONSISTENCY_TOLERANCE = 1e-5
"""Stored metrics are float32; recomputed ones float64."""


def table3_keys(subset: str = "test") -> tuple[str, ...]:
    """Table 3's metric keys of one subset (``test``, ``test_discordant``): accuracy at 0.5 and
    AUROC per finding."""
    return tuple(f"{subset}/{m}/{f}" for m in ("acc", "auroc") for f in FINDINGS)


def with_ci(metrics: dict, keys: tuple[str, ...]) -> dict[str, float]:
    """``keys`` of a metrics dict, each with its ``_ci_low``/``_ci_high`` bounds when present;
    absent and undefined (``null``) values are NaN."""
    values: dict[str, float] = {}
    for key in keys:
        for name in (key, *(key + s for s in CI_SUFFIXES)):
            if name in metrics or name == key:
                value = metrics.get(name)
                values[name] = math.nan if value is None else value
    return values


def jobs_table(jobs: list[JobResult], subset: str = "test") -> pd.DataFrame:
    """One row per job: its setting and overrides, Table 3 metrics of ``subset`` (+ CIs) and
    training time."""
    metrics = pd.DataFrame([with_ci(job.metrics, table3_keys(subset) + TRAINING_METRICS)
                            for job in jobs])
    return pd.concat([describe_jobs(jobs), metrics], axis=1)


def summarise(rows: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, ``_sd`` and ``runs`` of ``columns`` per group of ``by`` (first-seen order); a group
    of one run keeps its ``_ci_low``/``_ci_high`` (a CI is not averaged across runs)."""
    groups = rows.groupby(by, sort=False, dropna=False)
    runs = groups.size().rename("runs")
    parts = [runs, groups[columns].mean()]
    for column in columns:
        parts.append(groups[column].std(ddof=1).rename(f"{column}_sd"))
        for suffix in CI_SUFFIXES:
            if column + suffix in rows:
                parts.append(groups[column + suffix].first().where(runs == 1))
    return pd.concat(parts, axis=1).reset_index()


def formulation_table(jobs_frame: pd.DataFrame, subset: str = "test") -> pd.DataFrame:
    """Table 3: accuracy and AUROC of ``subset`` per finding for each setting (mean over its
    runs), from a :func:`jobs_table` of the same subset."""
    return summarise(jobs_frame, ["setting", "formulation"], list(table3_keys(subset)))


def stage_rows(jobs: list[JobResult]) -> tuple[pd.DataFrame, list[str]]:
    """Table 1 rows, one per job x model x unfreezing stage (``members[].stages``), and the
    names of the jobs whose results.json has no per-stage records."""
    settings = describe_jobs(jobs).set_index("job")["setting"]
    rows, without = [], []
    for job in jobs:
        if not all("stages" in member for member in job.members):
            without.append(job.name)
            continue
        for member in job.members:
            for stage in member["stages"]:
                rows.append({"job": job.name, "setting": settings[job.name],
                             "member": member["name"],
                             **{c: stage[c] for c in STAGE_COLUMNS if c != "blocks"},
                             "blocks": ", ".join(stage["blocks"]) or "(head only)",
                             **{k: v for k, v in stage["metrics"].items()
                                if not isinstance(v, list)}})  # confusion matrices left out
    return pd.DataFrame(rows), without


def stage_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 1 summarised over replicate runs: per setting, model and stage (mean, sd, runs)."""
    metrics = [c for c in rows.columns if "/" in c]
    return summarise(rows, ["setting", "member", "stage", "blocks"],
                     ["start_epoch", "epochs", "best_epoch", *metrics])


def confusion_counts(jobs: list[JobResult]) -> pd.DataFrame:
    """Per job and finding: TN, FP, FN, TP at threshold 0.5, recomputed from the predictions."""
    settings = describe_jobs(jobs).set_index("job")["setting"]
    rows = []
    for job in jobs:
        metrics = finding_metrics(job.predictions, subset="test")
        for finding in FINDINGS:
            (tn, fp), (fn, tp) = metrics[f"test/confusion/{finding}"]
            rows.append({"job": job.name, "setting": settings[job.name], "finding": finding,
                         "tn": tn, "fp": fp, "fn": fn, "tp": tp})
    return pd.DataFrame(rows)


def pooled_confusion(counts: pd.DataFrame) -> pd.DataFrame:
    """Figure 4's numbers: confusion counts summed over each setting's runs, per finding."""
    groups = counts.groupby(["setting", "finding"], sort=False)
    pooled = groups[["tn", "fp", "fn", "tp"]].sum()
    return pooled.assign(runs=groups.size()).reset_index()


def accuracy_bars(table3: pd.DataFrame) -> pd.DataFrame:
    """Figure 5's numbers: test accuracy per setting and finding with its error bar: the 95% CI
    for a single run whose metrics hold one, ± sd across runs otherwise (none for one run)."""
    rows = []
    for _, row in table3.iterrows():
        for finding in FINDINGS:
            key = f"test/acc/{finding}"
            low, high, interval = math.nan, math.nan, ""
            if row["runs"] > 1:
                low, high, interval = (row[key] - row[f"{key}_sd"], row[key] + row[f"{key}_sd"],
                                       "sd")
            elif pd.notna(row.get(f"{key}_ci_low", math.nan)):
                low, high, interval = row[f"{key}_ci_low"], row[f"{key}_ci_high"], "95% CI"
            rows.append({"setting": row["setting"], "finding": finding, "accuracy": row[key],
                         "low": low, "high": high, "interval": interval, "runs": row["runs"]})
    return pd.DataFrame(rows)


def training_points(jobs_frame: pd.DataFrame) -> pd.DataFrame:
    """Figure 8's numbers: per job, total epochs (all its models) and mean time per epoch."""
    return jobs_frame[["job", "setting", *TRAINING_METRICS]].rename(
        columns={k: k.split("/")[1] for k in TRAINING_METRICS})


def consistency_checks(jobs: list[JobResult]) -> pd.DataFrame:
    """Stored metrics that disagree with the same metrics recomputed from the job's predictions
    (accuracy, AUROC, confusion matrix, count per finding); empty when every job agrees."""
    rows = []
    for job in jobs:
        for key, recomputed in finding_metrics(job.predictions, subset="test").items():
            if key not in job.metrics or _agrees(job.metrics[key], recomputed):
                continue
            rows.append({"job": job.name, "key": key, "stored": job.metrics[key],
                         "recomputed": recomputed})
            log.warning("%s: %s is %s in results.json but %s from its predictions",
                        job.path, key, job.metrics[key], recomputed)
    return pd.DataFrame(rows, columns=["job", "key", "stored", "recomputed"])


def _agrees(stored: float | list | None, recomputed: float | list) -> bool:
    if isinstance(recomputed, list):
        return stored == recomputed
    stored = math.nan if stored is None else stored  # results.json stores undefined as null
    if math.isnan(stored) or math.isnan(recomputed):  # undefined (one class) in both, or not
        return math.isnan(stored) and math.isnan(recomputed)
    return math.isclose(stored, recomputed, abs_tol=CONSISTENCY_TOLERANCE)
