"""Point metrics (torchmetrics) and their bootstrap-resample versions against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
)

from cxr_lightning.evaluation.bootstrap import ClusterBootstrap, cluster_bootstrap
from cxr_lightning.evaluation.metrics import known_labels, point_metrics
from cxr_lightning.evaluation.resampled import additive_metrics, rank_metrics
from tests.helpers.eval_tables import prediction_table

THRESHOLDS = {"0.5": 0.5, "youden": 0.37, "sens90": 0.21}
SUFFIX = {"0.5": "", "youden": "_youden", "sens90": "_sens90"}


def _rates(confusion):
    (tn, fp), (fn, tp) = confusion
    return {"acc": (tp + tn) / (tn + fp + fn + tp), "sens": tp / (tp + fn),
            "spec": tn / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn)}


def _ece_by_hand(target, probability, weight, n_bins=15):
    """L1 ECE with bins [k/15, (k+1)/15) and probability 1.0 in a bin of its own."""
    bins = np.where(probability >= 1.0, n_bins, np.floor(probability * n_bins)).astype(int)
    gap = sum(abs(np.sum(weight[bins == b] * (target[bins == b] - probability[bins == b])))
              for b in np.unique(bins))
    return gap / weight.sum()


@pytest.mark.parametrize("tied", [False, True])
def test_point_metrics_match_sklearn(tied):
    table = prediction_table(3000, 900, seed=1, tied=tied)
    for finding in ("edema", "effusion"):
        y, p = known_labels(table, finding)
        metrics = point_metrics(y, p, THRESHOLDS)
        assert metrics["n"] == len(y) and metrics["n_pos"] == y.sum()
        assert metrics["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert metrics["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
        assert metrics["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        assert metrics["ece"] == pytest.approx(_ece_by_hand(y, p, np.ones(len(y))), abs=1e-12)
        for name, threshold in THRESHOLDS.items():
            confusion = confusion_matrix(y, p > threshold).tolist()
            assert metrics[f"confusion{SUFFIX[name]}"] == confusion
            for rate, value in _rates(confusion).items():
                assert metrics[f"{rate}{SUFFIX[name]}"] == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_every_resample_matches_sklearn_with_its_patient_weights(tied):
    table = prediction_table(1500, 400, seed=2, tied=tied)
    y, p = known_labels(table, "edema")
    bootstrap = cluster_bootstrap(table["subject_id"], n_bootstrap=6, seed=3)
    labelled = bootstrap.subset(table["edema"].notna().to_numpy())
    ranked = rank_metrics(labelled, y, p)
    additive = additive_metrics(labelled, y, p, THRESHOLDS)
    for b in range(6):
        weight = labelled.counts[b, labelled.codes]  # each image as often as its patient
        assert ranked["auroc"][b] == pytest.approx(roc_auc_score(y, p, sample_weight=weight),
                                                   abs=1e-12)
        assert ranked["auprc"][b] == pytest.approx(
            average_precision_score(y, p, sample_weight=weight), abs=1e-12)
        assert additive["brier"][b] == pytest.approx(
            brier_score_loss(y, p, sample_weight=weight), abs=1e-12)
        assert additive["ece"][b] == pytest.approx(_ece_by_hand(y, p, weight), abs=1e-12)
        for name, threshold in THRESHOLDS.items():
            confusion = confusion_matrix(y, p > threshold, sample_weight=weight)
            for rate, value in _rates(confusion).items():
                assert additive[f"{rate}{SUFFIX[name]}"][b] == pytest.approx(value, abs=1e-12)


def test_unit_weights_reproduce_the_torchmetrics_point_estimates():
    table = prediction_table(800, 800, seed=4, tied=True)
    y, p = known_labels(table, "effusion")
    everyone_once = ClusterBootstrap(codes=np.arange(len(y)), counts=np.ones((1, len(y))))
    resampled = {**rank_metrics(everyone_once, y, p),
                 **additive_metrics(everyone_once, y, p, THRESHOLDS)}
    point = point_metrics(y, p, THRESHOLDS)
    for name, values in resampled.items():
        assert values[0] == pytest.approx(point[name], abs=1e-6), name


def test_undefined_metrics_are_nan_not_zero():
    y = np.zeros(5, dtype=np.int64)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.45])
    metrics = point_metrics(y, p)
    for name in ("auroc", "auprc", "sens", "ppv"):  # no positives; no positive calls
        assert np.isnan(metrics[name]), name
    assert metrics["spec"] == 1.0 and metrics["npv"] == 1.0
    bootstrap = cluster_bootstrap(np.arange(5), n_bootstrap=4, seed=0)
    assert np.isnan(rank_metrics(bootstrap, y, p)["auroc"]).all()


def test_labels_other_than_0_1_or_nan_are_an_error():
    table = prediction_table(10, 5)
    table.loc[0, "effusion"] = 2.0
    with pytest.raises(ValueError, match="must be 0, 1 or NaN"):
        known_labels(table, "effusion")
