"""Paired comparison of runs (formulations) on the same test images.

AUROC: DeLong's test (:mod:`cxr_lightning.evaluation.delong`) plus a patient-cluster bootstrap
interval of the difference. Accuracy at 0.5: McNemar's exact test (statsmodels; the binomial
test on the discordant pairs, valid for any count). Holm's correction (statsmodels) across the
pairs of runs, separately for each finding, subset and test.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from cxr_lightning.evaluation.bootstrap import (
    CI_LEVEL,
    N_BOOTSTRAP,
    cluster_bootstrap,
    percentile_interval,
)
from cxr_lightning.evaluation.delong import delong_test
from cxr_lightning.evaluation.metrics import THRESHOLD, probability_column
from cxr_lightning.evaluation.resampled import rank_metrics
from cxr_lightning.evaluation.subgroups import DISCORDANT, discordant_mask
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

SUBSETS: tuple[str, ...] = ("all", DISCORDANT)
COMPARISON_COLUMNS: tuple[str, ...] = (
    "finding", "subset", "run_a", "run_b", "n", "n_pos",
    "auroc_a", "auroc_b", "auroc_delta", "auroc_delta_se",
    "auroc_delta_ci_low", "auroc_delta_ci_high",
    "auroc_delta_boot_ci_low", "auroc_delta_boot_ci_high",
    "delong_p", "delong_p_holm",
    "acc_a", "acc_b", "acc_delta", "mcnemar_a_only", "mcnemar_b_only",
    "mcnemar_p", "mcnemar_p_holm",
)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of paired accuracy: images only a / only b gets right."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar's exact (binomial) test of equal accuracy from per-image correctness of two
    classifiers on the same images (statsmodels ``mcnemar(exact=True)``)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = [[int(np.sum(correct_a & correct_b)), int(np.sum(correct_a & ~correct_b))],
             [int(np.sum(~correct_a & correct_b)), int(np.sum(~correct_a & ~correct_b))]]
    result = mcnemar(table, exact=True)
    return McNemarResult(a_only=table[0][1], b_only=table[1][0], p_value=float(result.pvalue))


def holm_adjust(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values (statsmodels ``multipletests(method="holm")``); NaN p-values
    (comparisons that could not be made) stay NaN and do not count in the family."""
    adjusted = pd.Series(np.nan, index=p_values.index)
    finite = p_values.notna()
    if finite.any():
        adjusted[finite] = multipletests(p_values[finite].to_numpy(), method="holm")[1]
    return adjusted


def paired_predictions(predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One table of every run's probabilities on the shared test images (``{finding}_prob`` of
    run ``r`` renamed ``{finding}_prob@r``), labels, subject and view from the first run.

    Raises ``ValueError`` when the runs were not evaluated on the same images or disagree on a
    label: paired tests are only meaningful on one test set (compare jobs of one sweep).
    """
    if len(predictions) < 2:
        raise ValueError(f"comparing runs needs at least two, got {list(predictions)}")
    names = list(predictions)
    reference = predictions[names[0]]
    columns = ["image_id", "subject_id", *(c for c in ("view",) if c in reference.columns),
               *FINDINGS]
    table = reference[columns].set_index("image_id")
    for name in names:
        run = predictions[name].set_index("image_id")
        if run.index.has_duplicates:
            raise ValueError(f"run {name!r}: duplicate image_id in its predictions")
        if set(run.index) != set(table.index):
            shared = len(set(run.index) & set(table.index))
            raise ValueError(
                f"runs {names[0]!r} and {name!r} were not evaluated on the same test images "
                f"({len(table)} and {len(run)} images, {shared} shared): paired tests need one "
                "test set; compare jobs of one sweep (same data and split config)")
        run = run.loc[table.index]
        labels_differ = ~((run[list(FINDINGS)] == table[list(FINDINGS)])
                          | (run[list(FINDINGS)].isna() & table[list(FINDINGS)].isna()))
        if labels_differ.to_numpy().any():
            raise ValueError(f"runs {names[0]!r} and {name!r} disagree on "
                             f"{int(labels_differ.to_numpy().sum())} test labels: they used "
                             "different label policies; compare runs of one cohort")
        for finding in FINDINGS:
            table[f"{probability_column(finding)}@{name}"] = run[probability_column(finding)]
    return table.reset_index()


def _compare_pair(table: pd.DataFrame, finding: str, run_a: str, run_b: str,
                  n_bootstrap: int, seed: int, level: float) -> dict[str, float | int | str]:
    """One row of the comparison: two runs, one finding, on the rows of ``table``."""
    known = table[finding].notna().to_numpy()
    target = table.loc[known, finding].to_numpy().astype(np.int64)
    score_a, score_b = (table.loc[known, f"{probability_column(finding)}@{run}"].to_numpy()
                        for run in (run_a, run_b))
    row: dict[str, float | int | str] = {"n": int(known.sum()), "n_pos": int(target.sum())}
    correct_a = (score_a > THRESHOLD) == (target == 1)
    correct_b = (score_b > THRESHOLD) == (target == 1)
    row.update(acc_a=float(correct_a.mean()) if len(target) else np.nan,
               acc_b=float(correct_b.mean()) if len(target) else np.nan)
    row["acc_delta"] = row["acc_a"] - row["acc_b"]
    test = mcnemar_test(correct_a, correct_b)
    row.update(mcnemar_a_only=test.a_only, mcnemar_b_only=test.b_only, mcnemar_p=test.p_value)
    n_pos, n_neg = row["n_pos"], row["n"] - row["n_pos"]
    if min(n_pos, n_neg) < 2:
        log.warning("%s vs %s, %s: %d positives and %d negatives: no AUROC comparison",
                    run_a, run_b, finding, n_pos, n_neg)
        return row
    delong = delong_test(target, score_a, score_b, level)
    row.update(auroc_a=delong.auroc_a, auroc_b=delong.auroc_b, auroc_delta=delong.delta,
               auroc_delta_se=delong.se, auroc_delta_ci_low=delong.ci_low,
               auroc_delta_ci_high=delong.ci_high, delong_p=delong.p_value)
    bootstrap = cluster_bootstrap(table.loc[known, "subject_id"], n_bootstrap, seed)
    delta = (rank_metrics(bootstrap, target, score_a)["auroc"]
             - rank_metrics(bootstrap, target, score_b)["auroc"])
    low, high = percentile_interval(delta, level, name=f"{finding} ΔAUROC {run_a}-{run_b}")
    row.update(auroc_delta_boot_ci_low=float(low), auroc_delta_boot_ci_high=float(high))
    return row


def compare_formulations(predictions: dict[str, pd.DataFrame], *,
                         subsets: tuple[str, ...] = SUBSETS, n_bootstrap: int = N_BOOTSTRAP,
                         seed: int = 0, level: float = CI_LEVEL) -> pd.DataFrame:
    """Every pair of runs compared on the same test images, per finding and subset.

    ``predictions`` maps a run name (job or formulation) to its test predictions table
    (results.json ``predictions``: image_id, subject_id, labels, ``{finding}_prob``). Subsets:
    ``"all"`` (every labelled image) and ``"discordant"`` (exactly one finding present).
    One row per (finding, subset, run_a, run_b), pairs in the order of ``predictions``;
    columns (``COMPARISON_COLUMNS``):

    - ``n``, ``n_pos``: labelled images of the finding in the subset, and its positives;
    - ``auroc_a``, ``auroc_b``, ``auroc_delta`` (a - b), ``auroc_delta_se``,
      ``auroc_delta_ci_low/high`` (DeLong, normal, images independent),
      ``auroc_delta_boot_ci_low/high`` (patient-cluster bootstrap percentile interval);
    - ``delong_p`` and ``delong_p_holm`` (Holm across the pairs of this finding and subset);
    - ``acc_a``, ``acc_b``, ``acc_delta`` at 0.5; ``mcnemar_a_only`` / ``mcnemar_b_only``
      (images only a / only b classifies correctly); ``mcnemar_p`` (exact) and
      ``mcnemar_p_holm``.

    AUROC columns are NaN where the subset lacks 2 positives and 2 negatives.
    """
    table = paired_predictions(predictions)
    unknown = set(subsets) - set(SUBSETS)
    if unknown:
        raise ValueError(f"unknown subsets {sorted(unknown)}; choose from {SUBSETS}")
    rows = []
    for subset in subsets:
        rows_of_subset = table if subset == "all" else table[discordant_mask(table)]
        for finding in FINDINGS:
            for run_a, run_b in itertools.combinations(predictions, 2):
                rows.append({"finding": finding, "subset": subset, "run_a": run_a,
                             "run_b": run_b, **_compare_pair(rows_of_subset, finding, run_a,
                                                             run_b, n_bootstrap, seed, level)})
    frame = pd.DataFrame(rows).reindex(columns=list(COMPARISON_COLUMNS))
    families = frame.groupby(["finding", "subset"], sort=False)
    frame["delong_p_holm"] = families["delong_p"].transform(holm_adjust)
    frame["mcnemar_p_holm"] = families["mcnemar_p"].transform(holm_adjust)
    return frame
