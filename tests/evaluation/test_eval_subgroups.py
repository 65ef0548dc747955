"""Discordant / concordant / per-view subsets and joint accuracy."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_lightning.evaluation.evaluate import evaluate_predictions
from cxr_lightning.evaluation.subgroups import (
    concordant_mask,
    discordant_mask,
    subset_masks,
    view_key,
)
from tests.helpers.eval_tables import prediction_table

NAN = np.nan


def test_subset_membership_by_hand():
    table = pd.DataFrame({
        "edema":    [0, 1, 0, 1, NAN, 1, 0],
        "effusion": [1, 0, 0, 1, 1, NAN, 1],
        "view": ["AP", "PA", "AP", None, "LATERAL", "AP", "ap axial"],
    })
    assert discordant_mask(table).tolist() == [True, True, False, False, False, False, True]
    assert concordant_mask(table).tolist() == [False, False, True, True, False, False, False]
    masks = subset_masks(table, "test")
    assert set(masks) == {"test", "test_discordant", "test_concordant", "test_view_AP",
                          "test_view_PA", "test_view_LATERAL", "test_view_ap_axial"}
    assert masks["test_view_AP"].tolist() == [True, False, True, False, False, True, False]
    assert view_key("AP AXIAL") == "AP_AXIAL"


def test_every_metric_on_every_subset_matches_the_subset_by_hand():
    test = prediction_table(600, 200, seed=41, masked=0.1)
    metrics = evaluate_predictions(test, test, n_bootstrap=100)
    both = test["edema"].notna() & test["effusion"].notna()
    subsets = {"test_discordant": both & (test["edema"] != test["effusion"]),
               "test_concordant": both & (test["edema"] == test["effusion"]),
               "test_view_AP": test["view"] == "AP", "test_view_PA": test["view"] == "PA"}
    for stage, rows in subsets.items():
        for finding in ("edema", "effusion"):
            labelled = test[rows & test[finding].notna()]
            assert metrics[f"{stage}/n/{finding}"] == len(labelled)
            auroc = metrics[f"{stage}/auroc/{finding}"]
            if stage == "test_concordant" or labelled[finding].nunique() == 2:
                assert auroc == pytest.approx(
                    roc_auc_score(labelled[finding], labelled[f"{finding}_prob"]), abs=1e-6)
                assert (metrics[f"{stage}/auroc/{finding}_ci_low"] <= auroc
                        <= metrics[f"{stage}/auroc/{finding}_ci_high"])
            for name in ("acc_youden", "ece", "brier", "npv_sens90"):
                assert f"{stage}/{name}/{finding}_ci_low" in metrics


def test_joint_accuracy_counts_images_whose_predicted_pair_is_exactly_right(caplog):
    table = pd.DataFrame({
        "subject_id": [1, 1, 2, 3, 4, 5],
        "view": ["AP", "AP", "PA", "PA", "PA", "PA"],
        "edema":        [1, 0, 1, NAN, 0, 1],
        "effusion":     [1, 1, 0, 1, 0, 1],
        "edema_prob":    [0.9, 0.2, 0.7, 0.9, 0.6, 0.8],
        "effusion_prob": [0.8, 0.7, 0.6, 0.9, 0.1, 0.3],
    })
    # both known: rows 0, 1, 2, 4, 5; exactly right: row 0 (1,1), row 1 (0,1); wrong: row 2
    # (effusion), row 4 (edema), row 5 (effusion)
    metrics = evaluate_predictions(table, None, n_bootstrap=200)
    assert metrics["test/n/all"] == 5
    assert metrics["test/joint_acc/all"] == pytest.approx(2 / 5)
    assert metrics["test/joint_acc/all_ci_low"] <= 2 / 5 <= metrics["test/joint_acc/all_ci_high"]
    # the discordant subset: rows 1 (0,1) and 2 (1,0); row 1 right
    assert metrics["test_discordant/joint_acc/all"] == pytest.approx(1 / 2)
    assert metrics["test_discordant/auroc/edema"] == pytest.approx(1.0, abs=1e-6)
    # AP images all have effusion: AUROC, specificity and NPV are undefined (None), not 0
    assert metrics["test_view_AP/n_pos/effusion"] == 2
    assert metrics["test_view_AP/sens/effusion"] == 1.0
    for name in ("auroc", "spec", "npv", "auroc/effusion_ci_low"):
        key = f"test_view_AP/{name}" if "/" in name else f"test_view_AP/{name}/effusion"
        assert metrics[key] is None, key
    # with 6 images many resamples lack a class: said once for the whole evaluation, naming
    # the subsets, not silently and not once per subset
    said = [r.getMessage() for r in caplog.records
            if "undefined in some bootstrap" in r.getMessage()]
    assert len(said) == 1 and "test_view_PA" in said[0]
