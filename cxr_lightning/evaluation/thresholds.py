"""Operating points chosen on the validation predictions (never on test).

Each finding gets three thresholds, applied as ``probability > threshold`` (torchmetrics' rule):

- ``"0.5"``: the fixed default;
- ``"youden"``: the validation ROC point maximising Youden's J = sensitivity + specificity - 1
  (the highest such threshold when several tie);
- ``"sens90"`` (``sens{100 * target}``): the highest threshold whose validation sensitivity
  reaches the target (default 0.9), i.e. the most specific point at that sensitivity.

The ROC point of validation score ``s`` calls ``probability >= s`` positive; its threshold is
the midpoint between ``s`` and the next lower distinct validation score, so ``>`` reproduces the
validation point exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import binary_roc

from cxr_lightning.evaluation.metrics import DEFAULT_OPERATING_POINT, THRESHOLD, known_labels
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

TARGET_SENSITIVITY = 0.9
YOUDEN = "youden"


def sensitivity_point_name(target_sensitivity: float) -> str:
    """Name of the target-sensitivity operating point: ``sens90`` for 0.9, ``sens97p5`` for
    0.975 (no dot: metric keys stay W&B-safe)."""
    return "sens" + f"{100 * target_sensitivity:g}".replace(".", "p")


def _roc(target: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, ...]:
    """Validation ROC (torchmetrics' ``binary_roc``) as float64 rates recomputed from the
    integer counts, so a sensitivity of exactly 0.9 compares equal to 0.9 (torchmetrics' rates
    are float32)."""
    fpr, tpr, thresholds = binary_roc(torch.tensor(probability, dtype=torch.float64),
                                      torch.tensor(target, dtype=torch.long))
    n_pos = int(target.sum())
    n_neg = len(target) - n_pos
    true_pos = np.rint(tpr.double().numpy() * n_pos)
    false_pos = np.rint(fpr.double().numpy() * n_neg)
    return false_pos / n_neg, true_pos / n_pos, thresholds.double().numpy()


def _strict_threshold(roc_thresholds: np.ndarray, index: int) -> float:
    """Threshold for ``>`` equivalent to ``>= roc_thresholds[index]`` on the validation scores."""
    if index == 0:  # torchmetrics' extra first point: nothing called positive
        return 1.0
    if index + 1 < len(roc_thresholds):
        return float((roc_thresholds[index] + roc_thresholds[index + 1]) / 2)
    return 0.0  # every validation image called positive


def youden_threshold(target: np.ndarray, probability: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these (validation) labels."""
    fpr, tpr, thresholds = _roc(target, probability)
    return _strict_threshold(thresholds, int(np.argmax(tpr - fpr)))


def sensitivity_threshold(target: np.ndarray, probability: np.ndarray,
                          target_sensitivity: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold reaching ``target_sensitivity`` on these (validation) labels."""
    _, tpr, thresholds = _roc(target, probability)
    return _strict_threshold(thresholds, int(np.argmax(tpr >= target_sensitivity)))


def operating_thresholds(val: pd.DataFrame | None,
                         target_sensitivity: float = TARGET_SENSITIVITY
                         ) -> dict[str, dict[str, float]]:
    """Per finding, ``{"0.5": 0.5, "youden": t, "sens90": t}`` chosen on the validation
    predictions ``val`` (same columns as the test predictions). Without validation predictions,
    or when a finding's validation labels hold one class, that finding keeps only 0.5 (logged)."""
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    chosen: dict[str, dict[str, float]] = {}
    for finding in FINDINGS:
        chosen[finding] = {DEFAULT_OPERATING_POINT: THRESHOLD}
        if val is None:
            continue
        target, probability = known_labels(val, finding)
        if not 0 < target.sum() < len(target):
            log.warning("%s: the %d labelled validation images hold one class only: no "
                        "operating point can be chosen on validation; only 0.5 is reported",
                        finding, len(target))
            continue
        chosen[finding][YOUDEN] = youden_threshold(target, probability)
        chosen[finding][sensitivity_point_name(target_sensitivity)] = sensitivity_threshold(
            target, probability, target_sensitivity)
    if val is None:
        log.warning("No validation predictions: only the 0.5 operating point is reported")
    return chosen
