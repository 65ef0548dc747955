"""McNemar, Holm and the table of pairwise formulation comparisons."""

from math import comb

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from cxr_lightning.evaluation.paired import (
    COMPARISON_COLUMNS,
    compare_formulations,
    holm_adjust,
    mcnemar_test,
)
from tests.helpers.eval_tables import prediction_table


def test_mcnemar_exact_p_from_a_hand_count():
    # 10 images both right, 1 only a right, 6 only b right, 3 both wrong
    correct_a = np.array([1] * 10 + [1] * 1 + [0] * 6 + [0] * 3, dtype=bool)
    correct_b = np.array([1] * 10 + [0] * 1 + [1] * 6 + [0] * 3, dtype=bool)
    result = mcnemar_test(correct_a, correct_b)
    assert (result.a_only, result.b_only) == (1, 6)
    # exact: 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128
    assert result.p_value == pytest.approx(2 * (comb(7, 0) + comb(7, 1)) / 2**7)


def test_holm_by_hand():
    p = pd.Series([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm_adjust(p).tolist()[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm_adjust(p).iloc[3])


@pytest.fixture(scope="module")
def runs():
    base = prediction_table(700, 250, seed=51, masked=0.1)
    rng = np.random.default_rng(52)
    runs = {}
    for name, noise in (("binary", 0.05), ("multilabel", 0.15), ("multiclass", 0.3)):
        run = base.copy()
        for finding in ("edema", "effusion"):
            run[f"{finding}_prob"] = np.clip(run[f"{finding}_prob"]
                                             + rng.normal(0, noise, len(run)), 0, 1)
        runs[name] = run.sample(frac=1, random_state=len(name))  # row order may differ
    return runs


def test_comparison_table_matches_sklearn_and_hand_holm(runs):
    table = compare_formulations(runs, n_bootstrap=300)
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    assert len(table) == 2 * 2 * 3  # subsets x findings x pairs
    for _, row in table.iterrows():
        a = runs[row["run_a"]].sort_values("image_id")
        b = runs[row["run_b"]].sort_values("image_id")
        rows = a[row["finding"]].notna()
        if row["subset"] == "discordant":
            rows &= a["edema"].notna() & a["effusion"].notna() & (a["edema"] != a["effusion"])
        y = a.loc[rows, row["finding"]].to_numpy()
        p_a = a.loc[rows, f"{row['finding']}_prob"].to_numpy()
        p_b = b.loc[rows, f"{row['finding']}_prob"].to_numpy()
        assert row["n"] == len(y) and row["n_pos"] == y.sum()
        assert row["auroc_a"] == pytest.approx(roc_auc_score(y, p_a))
        assert row["auroc_delta"] == pytest.approx(roc_auc_score(y, p_a) - roc_auc_score(y, p_b))
        assert row["acc_b"] == pytest.approx(accuracy_score(y, p_b > 0.5))
        assert row["auroc_delta_ci_low"] < row["auroc_delta"] < row["auroc_delta_ci_high"]
        assert row["auroc_delta_boot_ci_low"] < row["auroc_delta_boot_ci_high"]
    for _, family in table.groupby(["finding", "subset"]):
        p = family["delong_p"].to_numpy()
        order = np.argsort(p)
        by_hand = np.maximum.accumulate(np.minimum(1, p[order] * (3 - np.arange(3))))
        assert family["delong_p_holm"].to_numpy()[order] == pytest.approx(by_hand)


def test_runs_on_different_test_images_are_refused(runs):
    other = dict(runs, multiclass=runs["multiclass"].iloc[1:])
    with pytest.raises(ValueError, match="not evaluated on the same test images"):
        compare_formulations(other, n_bootstrap=10)


def test_runs_with_different_labels_are_refused(runs):
    relabelled = runs["multiclass"].copy()
    relabelled["effusion"] = 1 - relabelled["effusion"]
    with pytest.raises(ValueError, match="disagree on .* test labels"):
        compare_formulations(dict(runs, multiclass=relabelled), n_bootstrap=10)
