"""Test metrics against scikit-learn, on random and tied inputs, with masked labels."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from cxr_lightning.evaluation.metrics import finding_metrics


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
