"""Per-finding point metrics from the saved per-image predictions (torchmetrics).

Conventions shared by the whole evaluation package:

- a probability strictly above a threshold is a positive call (torchmetrics' convention);
- confusion matrices are ``[[TN, FP], [FN, TP]]``;
- a metric that is undefined on the data (AUROC with one class, PPV with no positive call, ...)
  is NaN here, never torchmetrics' silent 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_confusion_matrix,
)

from cxr_lightning.findings import FINDINGS, mean_of_defined

log = logging.getLogger(__name__)

THRESHOLD = 0.5
DEFAULT_OPERATING_POINT = "0.5"
"""Name of the fixed 0.5 operating point; its metrics carry no suffix (``acc``, ``sens``)."""
N_CALIBRATION_BINS = 15
"""Equal-width probability bins of the ECE and the reliability curve (torchmetrics' default)."""
RATE_METRICS: tuple[str, ...] = ("acc", "sens", "spec", "ppv", "npv")


def probability_column(finding: str) -> str:
    """Name of a finding's probability column in the predictions table."""
    return f"{finding}_prob"


def metric_suffix(operating_point: str) -> str:
    """Suffix of an operating point's metric names: none at 0.5, ``_youden``, ``_sens90``."""
    return "" if operating_point == DEFAULT_OPERATING_POINT else f"_{operating_point}"


def known_labels(predictions: pd.DataFrame, finding: str) -> tuple[np.ndarray, np.ndarray]:
    """One finding's labels (int 0/1) and probabilities, rows with a masked (NaN) label left out.

    Raises ``ValueError`` naming the columns when the table lacks them or holds labels other
    than 0/1.
    """
    columns = [finding, probability_column(finding)]
    missing = [c for c in columns if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions table lacks the column(s) {missing}; it needs one label "
                         f"and one probability column per finding ({columns})")
    known = predictions[finding].notna().to_numpy()
    target = predictions.loc[known, finding].to_numpy(dtype=float)
    if not np.isin(target, (0.0, 1.0)).all():
        raise ValueError(f"labels of {finding!r} must be 0, 1 or NaN (masked); found "
                         f"{sorted(set(target.tolist()) - {0.0, 1.0})[:5]}")
    probability = predictions.loc[known, probability_column(finding)].to_numpy(dtype=float)
    return target.astype(np.int64), probability


def rates_from_confusion(tn: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                         tp: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity, specificity, PPV and NPV from (possibly weighted, batched) confusion
    counts; NaN where a denominator is 0 (the rate is undefined, not 0)."""
    tn, fp, fn, tp = (np.asarray(x, dtype=float) for x in (tn, fp, fn, tp))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "acc": (tp + tn) / (tp + tn + fp + fn),
            "sens": tp / (tp + fn),
            "spec": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
        }


def point_metrics(target: np.ndarray, probability: np.ndarray,
                  thresholds: Mapping[str, float] | None = None,
                  n_bins: int = N_CALIBRATION_BINS) -> dict[str, float | list]:
    """One finding's metrics on labelled images, by metric name (``auroc``, ``acc_youden``...).

    ``n``, ``n_pos``; ``auroc``, ``auprc`` (average precision), ``brier``, ``ece`` (L1,
    ``n_bins`` equal bins); and at every operating point of ``thresholds`` (name -> threshold,
    default only 0.5): ``acc``, ``sens``, ``spec``, ``ppv``, ``npv`` and ``confusion``
    ``[[TN, FP], [FN, TP]]``, each suffixed by :func:`metric_suffix`. torchmetrics computes
    them (in float32 for AUROC/AUPRC); AUROC and AUPRC are NaN unless both classes are present.
    """
    thresholds = {DEFAULT_OPERATING_POINT: THRESHOLD} if thresholds is None else thresholds
    preds = torch.tensor(probability, dtype=torch.float64)
    labels = torch.tensor(target, dtype=torch.long)
    n, n_pos = len(labels), int(labels.sum())
    metrics: dict[str, float | list] = {"n": n, "n_pos": n_pos}
    both_classes = 0 < n_pos < n
    metrics["auroc"] = float(binary_auroc(preds, labels)) if both_classes else np.nan
    metrics["auprc"] = float(binary_average_precision(preds, labels)) if both_classes else np.nan
    if n == 0:
        metrics.update({"brier": np.nan, "ece": np.nan})
    else:
        metrics["brier"] = float(mean_squared_error(preds, labels.double()))
        metrics["ece"] = float(binary_calibration_error(preds, labels, n_bins=n_bins))
    for name, threshold in thresholds.items():
        suffix = metric_suffix(name)
        confusion = binary_confusion_matrix(preds, labels, threshold=float(threshold))
        (tn, fp), (fn, tp) = confusion.tolist()
        for rate, value in rates_from_confusion(tn, fp, fn, tp).items():
            metrics[f"{rate}{suffix}"] = float(value)
        metrics[f"confusion{suffix}"] = confusion.tolist()
    return metrics


def mean_auroc(metrics: Mapping[str, object], subset: str) -> float:
    """``{subset}/auroc/mean``: the mean of the findings' defined ``{subset}/auroc/{finding}``
    (NaN when none is), with one warning naming the undefined ones."""
    mean, undefined = mean_of_defined({f: metrics[f"{subset}/auroc/{f}"] for f in FINDINGS})
    if undefined:
        log.warning("%s/auroc is undefined for %s (one class in the %s labels); %s/auroc/mean "
                    "is the mean over the other findings (NaN when none is left)",
                    subset, ", ".join(undefined), subset, subset)
    return mean


def finding_metrics(predictions: pd.DataFrame, subset: str = "test") -> dict[str, float | list]:
    """Accuracy at 0.5, AUROC and the confusion matrix per finding, keyed ``{subset}/{metric}/{f}``.

    ``predictions`` has one row per image with the label column ``{finding}`` (0/1, NaN when
    masked) and ``{finding}_prob``; a probability above 0.5 is a positive call (torchmetrics'
    convention). Masked rows are left out of that finding's metrics. The
    confusion matrix is [[TN, FP], [FN, TP]]. The full set of metrics, with confidence
    intervals, comes from :func:`cxr_lightning.evaluation.evaluate.evaluate_predictions`.
    """
    metrics: dict[str, float | list] = {}
    for finding in FINDINGS:
        values = point_metrics(*known_labels(predictions, finding))
        for name in ("n", "acc", "auroc", "confusion"):
            metrics[f"{subset}/{name}/{finding}"] = values[name]
    metrics[f"{subset}/auroc/mean"] = mean_auroc(metrics, subset)
    return metrics
