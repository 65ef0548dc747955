"""Metrics of every bootstrap resample at once (vectorised, float64).

A resample weights each image by how often its patient was drawn, so each metric here is the
weighted version of its torchmetrics counterpart in :mod:`cxr_lightning.evaluation.metrics`
(same definitions, ties and binning; tests check both against scikit-learn with
``sample_weight``). Ranking metrics work on the distinct scores: per resample, the weighted
positives ``P`` and negatives ``N`` at each distinct score (ascending) come from one sparse
product with the patient counts; AUROC is the Mann-Whitney statistic with ties counted half,
AUPRC the step-wise average precision, the ROC curve the cumulative counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from scipy import sparse

from cxr_lightning.evaluation.bootstrap import ClusterBootstrap, resampled_sums
from cxr_lightning.evaluation.calibration import calibration_bins
from cxr_lightning.evaluation.metrics import (
    N_CALIBRATION_BINS,
    metric_suffix,
    rates_from_confusion,
)

CHUNK_ELEMENTS = 1 << 20
"""Resamples are processed in chunks of about this many (score, resample) cells (8 MiB)."""


def _score_counts(bootstrap: ClusterBootstrap, target: np.ndarray,
                  score: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of resamples: weighted positives and negatives at each distinct score, (G, b)
    arrays with scores ascending."""
    _, group = np.unique(score, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0

    def counts_by_score(rows: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((np.ones(int(rows.sum())),
                                  (group[rows], bootstrap.codes[rows])),
                                 shape=(n_groups, bootstrap.n_clusters))

    positives, negatives = counts_by_score(target == 1), counts_by_score(target == 0)
    chunk = max(1, CHUNK_ELEMENTS // max(n_groups, 1))
    for start in range(0, bootstrap.counts.shape[0], chunk):
        draws = np.ascontiguousarray(bootstrap.counts[start:start + chunk].T)
        yield positives @ draws, negatives @ draws


def rank_metrics(bootstrap: ClusterBootstrap, target: np.ndarray, score: np.ndarray,
                 fpr_grid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """AUROC and AUPRC of every resample, (B,) each (NaN where a resample lacks a class); with
    ``fpr_grid``, also ``tpr`` (B, len(fpr_grid)): the ROC curve's true positive rate
    interpolated linearly at those false positive rates (the upper point at vertical steps)."""
    auroc, auprc, tpr_on_grid = [], [], []
    for positives, negatives in _score_counts(bootstrap, target, score):
        cum_pos, cum_neg = np.cumsum(positives, axis=0), np.cumsum(negatives, axis=0)
        total_pos, total_neg = cum_pos[-1], cum_neg[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            below = cum_neg - 0.5 * negatives  # negatives ranked below, ties counted half
            auroc.append((positives * below).sum(axis=0) / (total_pos * total_neg))
            # images scoring at least each distinct score: the calls at that threshold
            true_pos = total_pos - cum_pos + positives
            false_pos = total_neg - cum_neg + negatives
            precision = np.divide(true_pos, true_pos + false_pos,
                                  out=np.zeros_like(true_pos), where=positives > 0)
            auprc.append((positives * precision).sum(axis=0) / total_pos)
            if fpr_grid is not None:
                tpr_on_grid.append(_interpolate_roc(false_pos / total_neg,
                                                    true_pos / total_pos, fpr_grid))
    metrics = {"auroc": np.concatenate(auroc), "auprc": np.concatenate(auprc)}
    if fpr_grid is not None:
        metrics["tpr"] = np.concatenate(tpr_on_grid)
    return metrics


def _interpolate_roc(fpr: np.ndarray, tpr: np.ndarray, fpr_grid: np.ndarray) -> np.ndarray:
    """(b, len(grid)) TPR at ``fpr_grid`` of ROC points (G, b) listed by ascending score."""
    curves = np.full((fpr.shape[1], len(fpr_grid)), np.nan)
    for column in range(fpr.shape[1]):
        if np.isfinite(fpr[0, column]) and np.isfinite(tpr[0, column]):
            curves[column] = np.interp(fpr_grid, np.r_[0.0, fpr[::-1, column]],
                                       np.r_[0.0, tpr[::-1, column]])
    return curves


def additive_metrics(bootstrap: ClusterBootstrap, target: np.ndarray, probability: np.ndarray,
                     thresholds: Mapping[str, float],
                     n_bins: int = N_CALIBRATION_BINS) -> dict[str, np.ndarray]:
    """Brier score, ECE and every operating point's rates (``acc``, ``sens_youden``...) of
    every resample, (B,) each, from one product of the patient counts with per-patient sums."""
    target = target.astype(np.float64)
    bins = calibration_bins(probability, n_bins)
    in_bin = bins[:, None] == np.arange(n_bins + 1)[None, :]
    columns = [np.ones_like(target), (probability - target) ** 2,
               *(in_bin * target[:, None]).T, *(in_bin * probability[:, None]).T]
    for threshold in thresholds.values():
        call = probability > threshold  # torchmetrics' rule: strictly above is positive
        columns += [(~call) & (target == 0), call & (target == 0),
                    (~call) & (target == 1), call & (target == 1)]
    sums = resampled_sums(bootstrap, np.column_stack(columns))
    count = sums[:, 0]
    observed, predicted = sums[:, 2:3 + n_bins], sums[:, 3 + n_bins:4 + 2 * n_bins]
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = {"brier": sums[:, 1] / count,
                   "ece": np.abs(observed - predicted).sum(axis=1) / count}
    confusion = sums[:, 4 + 2 * n_bins:]
    for index, name in enumerate(thresholds):
        tn, fp, fn, tp = confusion[:, 4 * index:4 * index + 4].T
        for rate, values in rates_from_confusion(tn, fp, fn, tp).items():
            metrics[f"{rate}{metric_suffix(name)}"] = values
    return metrics


def resampled_accuracy(bootstrap: ClusterBootstrap, correct: np.ndarray) -> np.ndarray:
    """(B,) fraction of correct images in every resample (e.g. joint accuracy)."""
    sums = resampled_sums(bootstrap, np.column_stack([np.ones(len(correct)), correct]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums[:, 1] / sums[:, 0]
