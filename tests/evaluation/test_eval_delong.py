"""DeLong's paired AUROC test: a published reference (pROC), a hand-worked example with ties,
the bootstrap distribution of the difference, and scikit-learn's AUROC."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxr_lightning.evaluation.bootstrap import cluster_bootstrap
from cxr_lightning.evaluation.delong import delong_covariance, delong_test
from cxr_lightning.evaluation.resampled import rank_metrics

# The aSAH data set shipped with the R package pROC (Turck et al. 2010, Intensive Care Med
# 36:107; 113 patients, 41 with a poor outcome): outcome, WFNS score (ordinal 1-5, many ties),
# S100B and NDKA.
ASAH_POOR_OUTCOME = np.array([
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0,
    0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0
])
ASAH_WFNS = np.array([
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2, 1, 1, 3,
    4, 2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1, 2, 2, 2, 1, 5, 1,
    1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4, 2, 1, 4, 5, 1, 1, 5, 4, 2,
    2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1, 1
])
ASAH_S100B = np.array([
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71, 0.04, 0.08,
    0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11, 0.13, 0.19, 0.05,
    0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46, 0.16, 0.07, 0.43, 0.45,
    0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1, 0.14, 0.15, 0.07, 0.06, 0.77,
    0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09, 0.27, 0.71, 0.08, 0.26, 0.08, 0.16,
    0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28, 0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24,
    0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07, 0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74,
    0.15, 0.47, 0.17, 0.44, 0.15, 0.5, 0.48
])
ASAH_NDKA = np.array([
    3.01, 8.54, 8.09, 10.42, 17.4, 12.75, 6, 13.2, 15.54, 6.01, 15.96, 17.86, 5.18, 8.9, 13.41,
    20.75, 11.6, 16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29, 12.53, 6.54, 6.3, 80.3,
    12.8, 9.8, 9.81, 9.85, 18.21, 5.03, 14.04, 21.93, 8.02, 7.42, 8.38, 6.59, 9.63, 13.12, 7.96,
    14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87, 9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95,
    21.22, 11.73, 10.4, 58.83, 6.39, 11.09, 12.22, 13.67, 17.21, 22.63, 12.9, 9.7, 21.57, 8.23,
    72.57, 15.54, 10.51, 10.6, 14.57, 5.19, 9.63, 4.61, 21.48, 17.3, 12.71, 9.44, 11.07, 19.46,
    10.83, 5.37, 11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.9, 46.83, 11.68, 12.67, 9.01,
    9.57, 34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45
])

# pROC's own test suite (tests/testthat/test-roc.test.R, github.com/xrobin/pROC) expects for
# roc.test(a, b) (paired DeLong, two-sided, 95% CI of AUC(a) - AUC(b)): Z, p, CI low, CI high.
PROC_ROC_TEST = {
    ("wfns", "s100b"): (2.20898359144091, 0.0271757822291882,
                        0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka"): (2.79777591868904, 0.00514557970691098,
                       0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b"): (-1.39077002573558, 0.164295175223054,
                        -0.2876917446341914, 0.0488706064228094),
}


@pytest.mark.parametrize(("a", "b"), list(PROC_ROC_TEST))
def test_reproduces_the_published_proc_results_on_asah(a, b):
    scores = {"wfns": ASAH_WFNS, "s100b": ASAH_S100B, "ndka": ASAH_NDKA}
    assert (len(ASAH_POOR_OUTCOME), ASAH_POOR_OUTCOME.sum()) == (113, 41)
    result = delong_test(ASAH_POOR_OUTCOME, scores[a].astype(float), scores[b])
    z, p, ci_low, ci_high = PROC_ROC_TEST[(a, b)]
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci_low, ci_high), rel=1e-9)
    assert result.auroc_a == pytest.approx(roc_auc_score(ASAH_POOR_OUTCOME, scores[a]))


def test_hand_worked_example_with_ties():
    """3 positives and 3 negatives, ties within and across classes. psi(x, y) = 1 if x > y,
    1/2 if x == y, 0 otherwise; V10(x_i) = mean_j psi(x_i, y_j), V01(y_j) = mean_i psi."""
    target = np.array([1, 1, 1, 0, 0, 0])
    score_a = np.array([0.9, 0.6, 0.4, 0.6, 0.3, 0.4])
    score_b = np.array([0.8, 0.5, 0.5, 0.5, 0.7, 0.2])
    # model a: x = (.9, .6, .4), y = (.6, .3, .4)
    v10_a = np.array([3, 2.5, 1.5]) / 3  # .9 beats all; .6 ties .6, beats .3 .4; ...
    v01_a = np.array([1.5, 3, 2.5]) / 3  # y=.6: beaten by .9, tied by .6; y=.3: by all; ...
    # model b: x = (.8, .5, .5), y = (.5, .7, .2)
    v10_b = np.array([3, 1.5, 1.5]) / 3
    v01_b = np.array([2, 1, 3]) / 3
    assert v10_a.mean() == pytest.approx(7 / 9) and v01_a.mean() == pytest.approx(7 / 9)
    assert v10_b.mean() == pytest.approx(6 / 9) and v01_b.mean() == pytest.approx(6 / 9)
    variance = (np.var(v10_a - v10_b, ddof=1) / 3 + np.var(v01_a - v01_b, ddof=1) / 3)
    assert variance == pytest.approx(29 / 324)  # (1/27)/3 + (25/108)/3, worked on paper

    result = delong_test(target, score_a, score_b)
    assert (result.auroc_a, result.auroc_b, result.delta) == pytest.approx((7 / 9, 6 / 9, 1 / 9))
    assert result.variance == pytest.approx(29 / 324)
    assert result.z == pytest.approx(2 / np.sqrt(29))
    assert result.p_value == pytest.approx(2 * norm.sf(2 / np.sqrt(29)))
    _, covariance = delong_covariance(target, np.vstack([score_a, score_b]))
    assert covariance[0, 0] == pytest.approx(np.var(v10_a, ddof=1) / 3
                                             + np.var(v01_a, ddof=1) / 3)


@pytest.mark.parametrize("tied", [False, True])
def test_variance_of_the_difference_matches_its_bootstrap_distribution(tied):
    rng = np.random.default_rng(21)
    n = 600
    target = rng.integers(0, 2, n)
    shared = rng.normal(0, 1, n)  # both models see the same image: correlated AUROCs
    score_a = target * 1.0 + shared + 0.5 * rng.normal(0, 1, n)
    score_b = target * 0.7 + shared + 0.8 * rng.normal(0, 1, n)
    if tied:
        score_a, score_b = np.round(score_a), np.round(score_b)
    result = delong_test(target, score_a, score_b)
    assert result.auroc_a == pytest.approx(roc_auc_score(target, score_a), abs=1e-12)
    assert result.auroc_b == pytest.approx(roc_auc_score(target, score_b), abs=1e-12)
    images = cluster_bootstrap(np.arange(n), n_bootstrap=4000, seed=2)  # independent images
    delta = (rank_metrics(images, target, score_a)["auroc"]
             - rank_metrics(images, target, score_b)["auroc"])
    assert result.variance == pytest.approx(np.var(delta, ddof=1), rel=0.12)
    assert result.delta == pytest.approx(np.mean(delta), abs=0.2 * result.se)


def test_identical_models_differ_by_nothing():
    target = np.array([0, 1, 0, 1, 1, 0])
    score = np.array([0.2, 0.8, 0.4, 0.6, 0.4, 0.1])
    result = delong_test(target, score, score.copy())
    assert (result.delta, result.z, result.p_value) == (0.0, 0.0, 1.0)


def test_too_few_positives_is_an_error():
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_test(np.array([1, 0, 0, 0]), np.arange(4.0), np.arange(4.0))
