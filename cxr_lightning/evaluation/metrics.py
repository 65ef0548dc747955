"""Per-finding test metrics from the saved per-image predictions (torchmetrics)."""

from __future__ import annotations

import pandas as pd
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_confusion_matrix,
)

from cxr_lightning.findings import FINDINGS

THRESHOLD = 0.5


def probability_column(finding: str) -> str:
    """Name of a finding's probability column in the predictions table."""
    return f"{finding}_prob"


def finding_metrics(predictions: pd.DataFrame, stage: str = "test") -> dict[str, float | list]:
    """Accuracy at 0.5, AUROC and the confusion matrix per finding, keyed ``{stage}/{metric}/{f}``.

    ``predictions`` has one row per image with the label column ``{finding}`` (0/1, NaN when
    masked) and ``{finding}_prob``; a probability above 0.5 is a positive call (torchmetrics'
    convention). Masked rows are left out of that finding's metrics. The
    confusion matrix is [[TN, FP], [FN, TP]].
    """
    metrics: dict[str, float | list] = {}
    for finding in FINDINGS:
        known = predictions[finding].notna()
        target = torch.tensor(predictions.loc[known, finding].to_numpy(), dtype=torch.long)
        probability = torch.tensor(
            predictions.loc[known, probability_column(finding)].to_numpy(), dtype=torch.float64)
        metrics[f"{stage}/n/{finding}"] = int(known.sum())
        metrics[f"{stage}/acc/{finding}"] = float(
            binary_accuracy(probability, target, threshold=THRESHOLD))
        metrics[f"{stage}/auroc/{finding}"] = float(binary_auroc(probability, target))
        metrics[f"{stage}/confusion/{finding}"] = binary_confusion_matrix(
            probability, target, threshold=THRESHOLD).tolist()
    metrics[f"{stage}/auroc/mean"] = sum(
        metrics[f"{stage}/auroc/{f}"] for f in FINDINGS) / len(FINDINGS)
    return metrics
