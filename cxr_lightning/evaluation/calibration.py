"""Calibration: the probability bins of the ECE and the reliability-curve data for the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cxr_lightning.evaluation.metrics import N_CALIBRATION_BINS, known_labels

RELIABILITY_COLUMNS: tuple[str, ...] = ("bin_low", "bin_high", "mean_predicted",
                                        "observed_fraction", "count")


def calibration_bins(probability: np.ndarray, n_bins: int = N_CALIBRATION_BINS) -> np.ndarray:
    """Bin index of each probability, torchmetrics' ECE binning: bin k holds [k/n, (k+1)/n)
    for k < n, and bin n holds the probabilities equal to 1."""
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = torch.bucketize(torch.tensor(probability, dtype=torch.float64), boundaries,
                            right=True) - 1
    return index.numpy()


def reliability_curve(predictions: pd.DataFrame, finding: str,
                      n_bins: int = N_CALIBRATION_BINS) -> pd.DataFrame:
    """Reliability-diagram data of one finding (labelled images only): one row per non-empty
    bin with ``bin_low``, ``bin_high``, ``mean_predicted`` (mean probability in the bin),
    ``observed_fraction`` (fraction of positives) and ``count``. The bins are those of the
    ECE in the metrics (:func:`calibration_bins`); the ECE is the count-weighted mean of
    ``|observed_fraction - mean_predicted|``."""
    target, probability = known_labels(predictions, finding)
    frame = pd.DataFrame({"bin": calibration_bins(probability, n_bins),
                          "target": target, "probability": probability})
    grouped = frame.groupby("bin", sort=True)
    curve = pd.DataFrame({"mean_predicted": grouped["probability"].mean(),
                          "observed_fraction": grouped["target"].mean(),
                          "count": grouped.size()})
    curve.insert(0, "bin_low", curve.index / n_bins)
    curve.insert(1, "bin_high", np.minimum(curve.index + 1, n_bins) / n_bins)
    return curve.reset_index(drop=True)[list(RELIABILITY_COLUMNS)]
