"""Paired comparison of a sweep's settings on their shared test images
(:func:`cxr_lightning.evaluation.paired.compare_formulations`: DeLong, McNemar, Holm)."""

from __future__ import annotations

import logging

import pandas as pd

from cxr_lightning.evaluation.bootstrap import N_BOOTSTRAP
from cxr_lightning.evaluation.paired import COMPARISON_COLUMNS, compare_formulations
from cxr_lightning.report.load import REPLICATE_KEYS, JobResult, describe_jobs, distinguishing_keys

log = logging.getLogger(__name__)


def setting_comparisons(jobs: list[JobResult], n_bootstrap: int = N_BOOTSTRAP
                        ) -> tuple[pd.DataFrame, list[str]]:
    """Every pair of settings compared per finding and subset (all, discordant), runs paired
    within each replicate value (e.g. ``seed``: the seed-1 runs of each setting with each
    other), Holm's correction within each replicate. Returns the table (the replicate keys,
    then :data:`COMPARISON_COLUMNS`; ``run_a``/``run_b`` are settings) and a note for each
    replicate group left out (one setting only, or runs on different test images)."""
    replicate_keys = [k for k in distinguishing_keys(jobs) if k in REPLICATE_KEYS]
    described = describe_jobs(jobs).assign(index=range(len(jobs)))
    frames, notes = [], []
    groups = described.groupby(replicate_keys, sort=False) if replicate_keys else [((), described)]
    for values, group in groups:
        replicate = dict(zip(replicate_keys, values if isinstance(values, tuple) else (values,),
                             strict=True))
        label = " ".join(f"{k}={v}" for k, v in replicate.items()) or "the sweep"
        if group["setting"].nunique() < 2:
            notes.append(f"{label}: one setting only, nothing to compare")
            continue
        if group["setting"].duplicated().any():
            notes.append(f"{label}: several runs of one setting ({', '.join(group['job'])}); "
                         "not compared")
            continue
        predictions = {row.setting: jobs[row.index].predictions for row in group.itertuples()}
        try:
            table = compare_formulations(predictions, n_bootstrap=n_bootstrap)
        except ValueError as error:
            notes.append(f"{label}: not compared: {error}")
            continue
        frames.append(table.assign(**replicate)[[*replicate_keys, *COMPARISON_COLUMNS]])
    for note in notes:
        log.warning("Formulation comparison, %s", note)
    empty = pd.DataFrame(columns=[*replicate_keys, *COMPARISON_COLUMNS])
    return (pd.concat(frames, ignore_index=True) if frames else empty), notes
