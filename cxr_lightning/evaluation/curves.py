"""ROC curve with its patient-bootstrap band on a fixed false-positive-rate grid (for plots)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import binary_roc

from cxr_lightning.evaluation.bootstrap import (
    CI_LEVEL,
    N_BOOTSTRAP,
    cluster_bootstrap,
    percentile_interval,
)
from cxr_lightning.evaluation.metrics import known_labels
from cxr_lightning.evaluation.resampled import rank_metrics

FPR_GRID = np.linspace(0.0, 1.0, 101)
ROC_BAND_COLUMNS: tuple[str, ...] = ("fpr", "tpr", "tpr_low", "tpr_high")


def roc_curve(predictions: pd.DataFrame, finding: str) -> pd.DataFrame:
    """One finding's ROC curve on the labelled images of ``predictions`` (torchmetrics'
    ``binary_roc``): columns ``fpr``, ``tpr``, ``threshold``. Raises ``ValueError`` when the
    labels hold one class only (no curve exists)."""
    target, probability = known_labels(predictions, finding)
    if not 0 < target.sum() < len(target):
        raise ValueError(f"{finding}: the {len(target)} labelled images hold one class only: "
                         "no ROC curve")
    fpr, tpr, threshold = binary_roc(torch.tensor(probability), torch.tensor(target))
    return pd.DataFrame({"fpr": fpr.numpy(), "tpr": tpr.numpy(), "threshold": threshold.numpy()})


def roc_band(predictions: pd.DataFrame, finding: str, *, fpr_grid: np.ndarray = FPR_GRID,
             n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
             level: float = CI_LEVEL) -> pd.DataFrame:
    """One finding's ROC curve (labelled images of ``predictions``) at the false positive rates
    ``fpr_grid``: columns ``fpr``, ``tpr`` (torchmetrics' ``binary_roc``, linearly
    interpolated; at a vertical step the upper point) and the pointwise percentile band
    ``tpr_low``/``tpr_high`` of the same curve over patient-level cluster bootstrap resamples
    (``subject_id``). Raises ``ValueError`` when the labels hold one class only."""
    curve = roc_curve(predictions, finding)
    target, probability = known_labels(predictions, finding)
    labelled = predictions[finding].notna().to_numpy()
    bootstrap = cluster_bootstrap(predictions.loc[labelled, "subject_id"], n_bootstrap, seed)
    curves = rank_metrics(bootstrap, target, probability, fpr_grid=np.asarray(fpr_grid))["tpr"]
    low, high = percentile_interval(curves, level, name=f"{finding} ROC band")
    return pd.DataFrame({"fpr": fpr_grid,
                         "tpr": np.interp(fpr_grid, curve["fpr"].to_numpy(dtype=float),
                                          curve["tpr"].to_numpy(dtype=float)),
                         "tpr_low": low, "tpr_high": high})
