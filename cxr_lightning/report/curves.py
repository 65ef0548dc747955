"""ROC curves of a sweep's jobs from their saved test predictions (torchmetrics)."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

from cxr_lightning.evaluation.metrics import probability_column
from cxr_lightning.report.load import JobResult, describe_jobs

log = logging.getLogger(__name__)

ROC_COLUMNS: tuple[str, ...] = ("setting", "job", "fpr", "tpr", "threshold", "auc")


def roc_points(jobs: list[JobResult], finding: str) -> tuple[pd.DataFrame, list[str]]:
    """Figures 6-7's numbers for one finding: every job's ROC curve (false and true positive rate
    at each threshold, torchmetrics' ``binary_roc``) with its AUROC, masked labels left out; and
    a note for each job whose test labels hold one class only (no curve, recorded)."""
    settings = describe_jobs(jobs).set_index("job")["setting"]
    curves, notes = [], []
    for job in jobs:
        known = job.predictions.dropna(subset=[finding])
        target = torch.tensor(known[finding].to_numpy(), dtype=torch.long)
        if target.unique().numel() < 2:
            notes.append(f"{job.name}: no ROC curve for {finding}: its {len(target)} labelled test "
                         "images are all of one class")
            log.warning(notes[-1])
            continue
        probability = torch.tensor(known[probability_column(finding)].to_numpy(),
                                   dtype=torch.float64)
        fpr, tpr, threshold = binary_roc(probability, target)
        curves.append(pd.DataFrame({
            "setting": settings[job.name], "job": job.name, "fpr": fpr.numpy(),
            "tpr": tpr.numpy(), "threshold": threshold.numpy(),
            "auc": float(binary_auroc(probability, target))}))
    frame = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=ROC_COLUMNS)
    return frame, notes
