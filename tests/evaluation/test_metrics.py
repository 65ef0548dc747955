"""Test metrics against scikit-learn, on random and tied inputs, with masked labels."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from cxr_lightning.evaluation.metrics import finding_metrics
from cxr_lightning.results import MemberResult, predictions_table


@pytest.mark.parametrize("tied", [False, True])
def test_metrics_match_sklearn(tied):
    rng = np.random.default_rng(3)
    n = 400
    table = pd.DataFrame({"edema": rng.integers(0, 2, n).astype(float),
                          "effusion": rng.integers(0, 2, n).astype(float)})
    for finding in ("edema", "effusion"):
        score = rng.random(n) * 0.6 + table[finding] * 0.4
        table[f"{finding}_prob"] = np.round(score, 1) if tied else score
    table.loc[:30, "edema"] = np.nan  # masked: excluded from edema's metrics only
    metrics = finding_metrics(table)
    for finding in ("edema", "effusion"):
        known = table[finding].notna()
        y = table.loc[known, finding].astype(int)
        p = table.loc[known, f"{finding}_prob"]
        assert metrics[f"test/n/{finding}"] == known.sum()
        assert metrics[f"test/auroc/{finding}"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert metrics[f"test/acc/{finding}"] == pytest.approx(accuracy_score(y, p > 0.5))
        assert metrics[f"test/confusion/{finding}"] == confusion_matrix(y, p > 0.5).tolist()
    assert metrics["test/n/edema"] == n - 31


def _member(probabilities):
    return MemberResult(name="multilabel", findings=("edema", "effusion"), epochs=1,
                        epoch_times_s=[1.0], unfreeze_history=[],
                        best_val_auroc_mean=0.5, best_checkpoint="best.ckpt",
                        precision="32-true", device="cpu", throughput=[],
                        probabilities={"test": [torch.tensor(probabilities)]})


def _test_manifest(n):
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "subject_id": range(n),
                         "study_id": range(n), "view": "PA", "edema": [0.0, 1.0] * (n // 2),
                         "effusion": [1.0, 0.0] * (n // 2)})


def test_predictions_table_puts_each_probability_in_its_finding_column():
    table = predictions_table(_test_manifest(2), [_member([[0.1, 0.8], [0.7, 0.2]])])
    assert table["edema_prob"].tolist() == pytest.approx([0.1, 0.7])
    assert table["effusion_prob"].tolist() == pytest.approx([0.8, 0.2])


def test_diverged_predictions_are_an_error_not_a_result():
    with pytest.raises(RuntimeError, match="not finite.*diverged"):
        predictions_table(_test_manifest(2), [_member([[float("nan"), 0.8], [0.7, 0.2]])])


def test_constant_predictions_are_flagged(caplog):
    predictions_table(_test_manifest(2), [_member([[0.5, 0.8], [0.5, 0.2]])])
    assert "constant probability" in caplog.text
