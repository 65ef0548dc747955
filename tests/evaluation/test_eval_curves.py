"""ROC band and reliability-curve data for the report's figures."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from cxr_lightning.evaluation.calibration import reliability_curve
from cxr_lightning.evaluation.curves import roc_band
from cxr_lightning.evaluation.metrics import known_labels, point_metrics
from tests.helpers.eval_tables import prediction_table


@pytest.mark.parametrize("tied", [False, True])
def test_roc_band_holds_the_sklearn_curve_inside_its_bootstrap_band(tied):
    table = prediction_table(800, 250, seed=61, tied=tied)
    band = roc_band(table, "edema", n_bootstrap=300)
    labelled = table.dropna(subset=["edema"])
    fpr, tpr, _ = roc_curve(labelled["edema"], labelled["edema_prob"], drop_intermediate=False)
    assert band["fpr"].tolist() == pytest.approx(np.linspace(0, 1, 101).tolist())
    assert band["tpr"].to_numpy() == pytest.approx(np.interp(band["fpr"], fpr, tpr), abs=1e-6)
    inside = (band["tpr_low"] <= band["tpr"] + 1e-9) & (band["tpr"] <= band["tpr_high"] + 1e-9)
    assert inside.all()
    assert (band["tpr_high"] - band["tpr_low"]).iloc[5:60].gt(0).all()  # fpr 0.05 to 0.6
    assert band.iloc[-1][["tpr", "tpr_low", "tpr_high"]].tolist() == [1.0, 1.0, 1.0]


def test_roc_band_of_one_class_is_an_error():
    table = prediction_table(50, 20, seed=62).assign(effusion=1.0)
    with pytest.raises(ValueError, match="one class"):
        roc_band(table, "effusion", n_bootstrap=10)


def test_reliability_curve_by_hand_and_consistent_with_the_ece():
    table = prediction_table(1000, 300, seed=63)
    table.loc[:4, "effusion_prob"] = 1.0  # probability 1 has a bin of its own
    curve = reliability_curve(table, "effusion", n_bins=10)
    y, p = known_labels(table, "effusion")
    bins = np.where(p >= 1, 10, np.floor(p * 10)).astype(int)
    for _, row in curve.iterrows():
        in_bin = bins == round(row["bin_low"] * 10)
        assert row["count"] == in_bin.sum()
        assert row["mean_predicted"] == pytest.approx(p[in_bin].mean())
        assert row["observed_fraction"] == pytest.approx(y[in_bin].mean())
    assert curve["count"].sum() == len(y)
    assert curve.iloc[-1][["bin_low", "bin_high"]].tolist() == [1.0, 1.0]
    gap = (curve["count"] * (curve["observed_fraction"] - curve["mean_predicted"]).abs()).sum()
    assert gap / len(y) == pytest.approx(point_metrics(y, p, n_bins=10)["ece"], abs=1e-12)
