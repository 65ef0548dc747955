"""Operating points are chosen on validation predictions, never on test."""

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score, roc_curve

from cxr_lightning.evaluation.evaluate import evaluate_predictions
from cxr_lightning.evaluation.thresholds import operating_thresholds, sensitivity_point_name
from tests.helpers.eval_tables import prediction_table


def _shifted(table: pd.DataFrame, shift: float) -> pd.DataFrame:
    """The same images with every effusion probability moved by ``shift`` (clipped)."""
    return table.assign(effusion_prob=np.clip(table["effusion_prob"] + shift, 0.001, 0.999))


@pytest.fixture(scope="module")
def val_and_test():
    val = _shifted(prediction_table(800, 300, seed=31), -0.25)  # val scores low...
    test = _shifted(prediction_table(900, 300, seed=32), +0.2)  # ... test scores high
    return val, test


def _sklearn_point(target, probability, index_rule):
    """Validation images called positive at the sklearn ROC point chosen by ``index_rule``."""
    fpr, tpr, thresholds = roc_curve(target, probability, drop_intermediate=False)
    return probability >= thresholds[index_rule(fpr, tpr)]


def test_youden_threshold_is_the_validation_roc_optimum_not_the_test_one(val_and_test):
    val, test = val_and_test
    chosen = operating_thresholds(val)["effusion"]["youden"]
    y_val, p_val = val["effusion"].to_numpy(), val["effusion_prob"].to_numpy()
    best_on_val = _sklearn_point(y_val, p_val, lambda fpr, tpr: np.argmax(tpr - fpr))
    assert np.array_equal(p_val > chosen, best_on_val)
    y_test, p_test = test["effusion"].to_numpy(), test["effusion_prob"].to_numpy()
    best_on_test = operating_thresholds(test)["effusion"]["youden"]
    assert abs(best_on_test - chosen) > 0.2  # test would have chosen a very different point
    metrics = evaluate_predictions(test, val, n_bootstrap=50)
    assert metrics["val/threshold_youden/effusion"] == chosen
    assert metrics["test/sens_youden/effusion"] == pytest.approx(
        recall_score(y_test, p_test > chosen))
    assert metrics["test/spec_youden/effusion"] == pytest.approx(
        recall_score(y_test, p_test > chosen, pos_label=0))
    moved_test = evaluate_predictions(_shifted(test, 0.1), val, n_bootstrap=50)
    assert moved_test["val/threshold_youden/effusion"] == chosen  # test never moves it


def test_sensitivity_threshold_is_the_most_specific_reaching_the_target_on_validation(
        val_and_test):
    val, _ = val_and_test
    y_val, p_val = val["effusion"].to_numpy(), val["effusion_prob"].to_numpy()
    chosen = operating_thresholds(val, target_sensitivity=0.9)["effusion"]["sens90"]
    assert recall_score(y_val, p_val > chosen) >= 0.9
    stricter = np.unique(p_val)[np.unique(p_val) > chosen].min()  # next distinct val score up
    assert recall_score(y_val, p_val > stricter) < 0.9
    first_reaching = _sklearn_point(y_val, p_val, lambda fpr, tpr: np.argmax(tpr >= 0.9))
    assert np.array_equal(p_val > chosen, first_reaching)


def test_without_validation_only_the_default_threshold_is_reported(caplog):
    test = prediction_table(300, 100, seed=33)
    metrics = evaluate_predictions(test, None, n_bootstrap=20)
    assert operating_thresholds(None) == {"edema": {"0.5": 0.5}, "effusion": {"0.5": 0.5}}
    assert "test/acc/edema" in metrics
    assert not any("youden" in key or "sens90" in key for key in metrics)
    assert "No validation predictions" in caplog.text


def test_a_one_class_validation_finding_keeps_only_the_default(caplog):
    val = prediction_table(200, 80, seed=34).assign(edema=0.0)
    with caplog.at_level(logging.WARNING):
        chosen = operating_thresholds(val)
    assert chosen["edema"] == {"0.5": 0.5}
    assert set(chosen["effusion"]) == {"0.5", "youden", "sens90"}
    assert "edema" in caplog.text and "one class" in caplog.text


def test_operating_point_names_have_no_dot():
    assert sensitivity_point_name(0.9) == "sens90"
    assert sensitivity_point_name(0.975) == "sens97p5"
