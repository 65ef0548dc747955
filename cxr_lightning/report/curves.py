"""Curves of a sweep's jobs from their saved test predictions: ROC (torchmetrics), its
patient-bootstrap band and reliability-diagram bins (:mod:`cxr_lightning.evaluation`)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cxr_lightning.evaluation.bootstrap import N_BOOTSTRAP
from cxr_lightning.evaluation.calibration import reliability_curve
from cxr_lightning.evaluation.curves import roc_band, roc_curve
from cxr_lightning.evaluation.metrics import known_labels
from cxr_lightning.report.load import JobResult, describe_jobs

log = logging.getLogger(__name__)

ROC_COLUMNS: tuple[str, ...] = ("setting", "job", "fpr", "tpr", "threshold", "auc")


def _with_both_classes(jobs: list[JobResult], finding: str) -> tuple[list[JobResult], list[str]]:
    """The jobs whose labelled test images of ``finding`` hold both classes, and a note for
    each other job (it gets no curve)."""
    kept, notes = [], []
    for job in jobs:
        target, _ = known_labels(job.predictions, finding)
        if 0 < target.sum() < len(target):
            kept.append(job)
        else:
            notes.append(f"{job.name}: no ROC curve for {finding}: its {len(target)} labelled "
                         "test images are all of one class")
            log.warning(notes[-1])
    return kept, notes


def _labelled(frame: pd.DataFrame, job: JobResult, settings: pd.Series) -> pd.DataFrame:
    return frame.assign(setting=settings[job.name], job=job.name)


def roc_points(jobs: list[JobResult], finding: str) -> tuple[pd.DataFrame, list[str]]:
    """Figures 6-7's numbers for one finding: every job's ROC curve (false and true positive rate
    at each threshold, torchmetrics' ``binary_roc``) with its AUROC, masked labels left out; and
    a note for each job whose test labels hold one class only (no curve, recorded)."""
    settings = describe_jobs(jobs).set_index("job")["setting"]
    kept, notes = _with_both_classes(jobs, finding)
    curves = []
    for job in kept:
        curve = roc_curve(job.predictions, finding)
        curve["auc"] = float(np.trapezoid(curve["tpr"], curve["fpr"]))  # the area under it
        curves.append(_labelled(curve, job, settings)[list(ROC_COLUMNS)])
    frame = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=ROC_COLUMNS)
    return frame, notes


def roc_bands(jobs: list[JobResult], finding: str, n_bootstrap: int = N_BOOTSTRAP
              ) -> pd.DataFrame:
    """Each job's ROC curve on a fixed false-positive-rate grid with its 95% patient-bootstrap
    band (:func:`cxr_lightning.evaluation.curves.roc_band`); jobs with one class are left out
    (:func:`roc_points` notes them)."""
    settings = describe_jobs(jobs).set_index("job")["setting"]
    kept, _ = _with_both_classes(jobs, finding)
    bands = [_labelled(roc_band(job.predictions, finding, n_bootstrap=n_bootstrap), job, settings)
             for job in kept]
    return pd.concat(bands, ignore_index=True) if bands else pd.DataFrame()


def reliability_points(jobs: list[JobResult], finding: str) -> pd.DataFrame:
    """Reliability-diagram numbers of one finding: per job, each non-empty probability bin's
    mean predicted probability, observed fraction of positives and count
    (:func:`cxr_lightning.evaluation.calibration.reliability_curve`, the ECE's bins)."""
    settings = describe_jobs(jobs).set_index("job")["setting"]
    curves = [_labelled(reliability_curve(job.predictions, finding), job, settings)
              .assign(finding=finding) for job in jobs]
    return pd.concat(curves, ignore_index=True)
