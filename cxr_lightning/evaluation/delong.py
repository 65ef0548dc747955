"""DeLong's test for the difference of two paired AUROCs (same images, two models).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of correlated AUROCs from the
structural components (placements) of the Mann-Whitney statistic. Sun & Xu (2014) compute them
in O(n log n) from midranks: for each model, with ``m`` positives X and ``n`` negatives Y,
``T_x``, ``T_y`` and ``T_z`` are the midranks of a score within X, within Y and within X ∪ Y;

    AUC   = (sum of T_z over X - m(m+1)/2) / (m n)
    V10_i = (T_z(x_i) - T_x(x_i)) / n          (share of negatives below x_i, ties half)
    V01_j = 1 - (T_z(y_j) - T_y(y_j)) / m      (share of positives above y_j, ties half)
    S     = cov(V10) / m + cov(V01) / n        (sample covariances across models)

The images are assumed independent; for patients with several images the cluster-bootstrap
interval of the difference (:func:`cxr_lightning.evaluation.paired.compare_formulations`)
accounts for their correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from cxr_lightning.evaluation.bootstrap import CI_LEVEL


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's comparison of model a with model b (``delta = auroc_a - auroc_b``)."""

    auroc_a: float
    auroc_b: float
    delta: float
    variance: float
    se: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float


def delong_covariance(target: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and their DeLong covariance matrix (k, k) for ``scores`` (k, n) of k models
    on the same n images with 0/1 ``target`` (n,)."""
    target = np.asarray(target)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != len(target):
        raise ValueError(f"scores have shape {scores.shape}; expected (models, {len(target)})")
    if not np.isin(target, (0, 1)).all():
        raise ValueError("DeLong's test needs 0/1 labels")
    positives, negatives = scores[:, target == 1], scores[:, target == 0]
    m, n = positives.shape[1], negatives.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 positives and 2 negatives "
                         f"(got {m} and {n})")
    rank_pos = rankdata(positives, axis=1)
    rank_neg = rankdata(negatives, axis=1)
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aurocs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1 - (rank_all[:, m:] - rank_neg) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aurocs, covariance


def delong_test(target: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                level: float = CI_LEVEL) -> DeLongResult:
    """Two-sided DeLong test of AUROC(a) = AUROC(b) on paired scores, with the normal
    ``level`` confidence interval of the difference. Identical AUROC and zero variance (e.g.
    the same scores twice) give z = 0, p = 1."""
    aurocs, covariance = delong_covariance(target, np.vstack([score_a, score_b]))
    delta = float(aurocs[0] - aurocs[1])
    variance = float(max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0.0))
    se = float(np.sqrt(variance))
    z = delta / se if se > 0 else float(np.sign(delta) * np.inf) if delta else 0.0
    half_width = float(norm.ppf(0.5 + level / 2)) * se
    return DeLongResult(auroc_a=float(aurocs[0]), auroc_b=float(aurocs[1]), delta=delta,
                        variance=variance, se=se, ci_low=delta - half_width,
                        ci_high=delta + half_width, z=z, p_value=float(2 * norm.sf(abs(z))))
