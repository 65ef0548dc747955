"""The evaluation of one job: every metric, per subset, with patient-bootstrap CIs.

Key scheme of the returned flat dict (also results.json ``metrics`` and the W&B summary):

- ``{subset}/{metric}/{finding}``, with ``subset`` one of ``test``, ``test_discordant``,
  ``test_concordant``, ``test_view_{VIEW}`` (:mod:`cxr_lightning.evaluation.subgroups`) and
  ``val`` (point estimates at 0.5 only: the operating points are chosen there);
- ``metric``: ``n``, ``n_pos``, ``auroc``, ``auprc``, ``brier``, ``ece``, and at each operating
  point ``acc``, ``sens``, ``spec``, ``ppv``, ``npv``, ``confusion`` ([[TN, FP], [FN, TP]]),
  without suffix at 0.5, with ``_youden`` and ``_sens90`` at the thresholds chosen on
  validation (:mod:`cxr_lightning.evaluation.thresholds`);
- 95% CIs of every scalar metric except the counts: ``{subset}/{metric}/{finding}_ci_low`` and
  ``_ci_high`` (patient-level cluster bootstrap, percentile);
- ``{subset}/auroc/mean`` (mean over findings, with CI), ``{subset}/joint_acc/all`` (fraction of
  images with both labels known whose predicted pair at 0.5 equals the truth, with CI) and
  ``{subset}/n/all`` (those images);
- ``val/threshold_youden/{finding}``, ``val/threshold_sens90/{finding}``: the chosen thresholds.

Undefined values (a subset without positives has no AUROC) are ``None``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import multilabel_exact_match
from tqdm.auto import tqdm

from cxr_lightning.evaluation.bootstrap import (
    CI_LEVEL,
    N_BOOTSTRAP,
    ClusterBootstrap,
    cluster_bootstrap,
    percentile_interval,
)
from cxr_lightning.evaluation.metrics import (
    DEFAULT_OPERATING_POINT,
    N_CALIBRATION_BINS,
    THRESHOLD,
    known_labels,
    mean_auroc,
    point_metrics,
    probability_column,
)
from cxr_lightning.evaluation.resampled import additive_metrics, rank_metrics, resampled_accuracy
from cxr_lightning.evaluation.subgroups import both_labels_known, subset_masks
from cxr_lightning.evaluation.thresholds import TARGET_SENSITIVITY, operating_thresholds
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

Metrics = dict[str, float | int | list | None]


def _add_interval(metrics: Metrics, key: str, replicates: np.ndarray, level: float,
                  undefined: dict[str, float]) -> None:
    low, high = percentile_interval(replicates, level, name=key, undefined=undefined)
    metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = float(low), float(high)


def _finding_metrics(table: pd.DataFrame, subset: str, finding: str,
                     thresholds: Mapping[str, float], bootstrap: ClusterBootstrap | None,
                     level: float, n_bins: int, undefined: dict[str, float]
                     ) -> tuple[Metrics, np.ndarray | None]:
    """One finding's metrics on one subset, and its AUROC replicates (None without bootstrap)."""
    target, probability = known_labels(table, finding)
    metrics: Metrics = {f"{subset}/{name}/{finding}": value for name, value in
                        point_metrics(target, probability, thresholds, n_bins).items()}
    if bootstrap is None or len(target) == 0:
        return metrics, None
    labelled = bootstrap.subset(table[finding].notna().to_numpy())
    replicates = {**rank_metrics(labelled, target, probability),
                  **additive_metrics(labelled, target, probability, thresholds, n_bins)}
    for name, values in replicates.items():
        _add_interval(metrics, f"{subset}/{name}/{finding}", values, level, undefined)
    return metrics, replicates["auroc"]


def _joint_accuracy(table: pd.DataFrame, subset: str, bootstrap: ClusterBootstrap | None,
                    level: float, undefined: dict[str, float]) -> Metrics:
    """Exact-match accuracy of the (edema, effusion) pair at 0.5 on images with both labels."""
    both = both_labels_known(table).to_numpy()
    if not both.any():
        return {}
    labels = torch.tensor(table.loc[both, list(FINDINGS)].to_numpy(), dtype=torch.long)
    probabilities = torch.tensor(
        table.loc[both, [probability_column(f) for f in FINDINGS]].to_numpy(),
        dtype=torch.float64)
    key = f"{subset}/joint_acc/all"
    metrics: Metrics = {f"{subset}/n/all": int(both.sum()), key: float(multilabel_exact_match(
        probabilities, labels, num_labels=len(FINDINGS), threshold=THRESHOLD))}
    if bootstrap is not None:
        correct = ((probabilities > THRESHOLD) == (labels == 1)).all(dim=1).numpy()
        _add_interval(metrics, key, resampled_accuracy(bootstrap.subset(both), correct), level,
                      undefined)
    return metrics


def subset_metrics(table: pd.DataFrame, subset: str,
                  thresholds: Mapping[str, Mapping[str, float]], *,
                  n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = CI_LEVEL,
                  n_bins: int = N_CALIBRATION_BINS,
                  undefined: dict[str, float] | None = None) -> Metrics:
    """Every metric of one set of images (keys ``{subset}/...``), with bootstrap CIs unless
    ``n_bootstrap`` is 0. ``thresholds``: per finding, operating point name -> threshold.
    Metrics undefined in some resamples are added to ``undefined`` (key -> largest undefined
    share) when given (the caller reports them), else warned about here."""
    if n_bootstrap and "subject_id" not in table.columns:
        raise ValueError(f"{subset} predictions lack subject_id: the patient-level bootstrap "
                         "needs each image's patient (results.json predictions hold it)")
    bootstrap = (cluster_bootstrap(table["subject_id"], n_bootstrap, seed)
                 if n_bootstrap else None)
    metrics: Metrics = {}
    auroc_replicates = []
    collected: dict[str, float] = {} if undefined is None else undefined
    for finding in FINDINGS:
        values, replicates = _finding_metrics(table, subset, finding, thresholds[finding],
                                              bootstrap, level, n_bins, collected)
        metrics.update(values)
        auroc_replicates.append(replicates)
    metrics[f"{subset}/auroc/mean"] = mean_auroc(metrics, subset)
    if all(r is not None for r in auroc_replicates):
        _add_interval(metrics, f"{subset}/auroc/mean", np.mean(auroc_replicates, axis=0), level,
                      collected)
    metrics.update(_joint_accuracy(table, subset, bootstrap, level, collected))
    if undefined is None:
        warn_undefined(collected)
    return metrics


def warn_undefined(undefined: dict[str, float]) -> None:
    """One warning for every metric (``{subset}/{name}/{finding}`` -> largest undefined share)
    undefined in some bootstrap resamples, with what it means and what to do."""
    if not undefined:
        return
    subsets = sorted({key.split("/", 1)[0] for key in undefined})
    worst = sorted(undefined.items(), key=lambda item: -item[1])[:3]
    log.warning("Bootstrap CIs: %d metric(s) in %d subset(s) (%s) are undefined in some "
                "bootstrap resamples (no positives, negatives or positive calls drawn); their "
                "CIs come from the other resamples (most affected: %s). Their intervals are "
                "less reliable: a larger test set (more patients per subset) avoids this",
                len(undefined), len(subsets), ", ".join(subsets),
                ", ".join(f"{key} {100 * share:.0f}%" for key, share in worst))


def _json_safe(metrics: Metrics) -> Metrics:
    """NaN (undefined) -> None, so results.json stays valid JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def evaluate_predictions(test: pd.DataFrame, val: pd.DataFrame | None = None, *,
                         n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                         target_sensitivity: float = TARGET_SENSITIVITY,
                         level: float = CI_LEVEL,
                         thresholds: Mapping[str, Mapping[str, float]] | None = None) -> Metrics:
    """All metrics of a job from its test (and validation) predictions, as a flat dict in the
    key scheme of this module's docstring. ``test``/``val``: one row per image with
    ``subject_id``, ``view``, the labels (0/1, NaN when masked) and ``{finding}_prob``.
    Thresholds are chosen on ``val`` only (:func:`operating_thresholds`), unless the caller
    passes the ones it already chose there as ``thresholds``; CIs resample patients
    ``n_bootstrap`` times, seeded by ``seed``."""
    if thresholds is None:
        thresholds = operating_thresholds(val, target_sensitivity)
    masks = subset_masks(test, "test")
    metrics: Metrics = {}
    undefined: dict[str, float] = {}
    for subset, mask in tqdm(masks.items(), desc="Evaluating (bootstrap CIs)", unit="subset",
                            disable=None):
        metrics.update(subset_metrics(test[mask], subset, thresholds, n_bootstrap=n_bootstrap,
                                     seed=seed, level=level, undefined=undefined))
    warn_undefined(undefined)
    if val is not None:
        at_half = {f: {DEFAULT_OPERATING_POINT: THRESHOLD} for f in FINDINGS}
        metrics.update(subset_metrics(val, "val", at_half, n_bootstrap=0))
    for finding, chosen in thresholds.items():
        for name, threshold in chosen.items():
            if name != DEFAULT_OPERATING_POINT:
                metrics[f"val/threshold_{name}/{finding}"] = threshold
    return _json_safe(metrics)
