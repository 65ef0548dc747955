"""Time of the evaluation with patient-bootstrap CIs on a study-sized test set.

    .venv/bin/python experiments/bench_bootstrap.py [--images 10000] [--patients 3000]
        [--resamples 2000] [--rounds 3] [--seed 0]

Generates ``--images`` test and ``--images / 5`` validation predictions of ``--patients``
patients (AP/PA views, 5% of edema labels masked, a per-patient shift of the scores so images of
a patient are correlated), then times, per round:

- ``evaluate``: :func:`evaluate_predictions` (every metric on the whole test set and its
  discordant, concordant and per-view subsets, with ``--resamples`` patient resamples each;
  thresholds chosen on validation; validation metrics), divided by the number of findings;
- ``bootstrap``: for one finding on the whole test set, the bootstrap alone: drawing the
  patient resamples, every metric of every resample (AUROC, AUPRC, Brier, ECE, and the rates
  at the three operating points) and their percentile intervals.

Figures are the best and the median round (the machine may be shared: see ``load_avg_1min``).
The last printed line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch

from cxr_lightning.evaluation.bootstrap import cluster_bootstrap, percentile_interval
from cxr_lightning.evaluation.evaluate import evaluate_predictions
from cxr_lightning.evaluation.metrics import known_labels
from cxr_lightning.evaluation.resampled import additive_metrics, rank_metrics
from cxr_lightning.evaluation.thresholds import operating_thresholds
from cxr_lightning.findings import FINDINGS

log = logging.getLogger("bench_bootstrap")


def synthetic_predictions(n_images: int, n_patients: int, seed: int) -> pd.DataFrame:
    """Per-image predictions of ``n_patients`` patients, their images' scores correlated."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, n_patients, n_images)
    patient_shift = rng.normal(0, 0.7, n_patients)[patient]
    table = pd.DataFrame({"image_id": np.arange(n_images), "subject_id": patient,
                          "view": np.where(rng.random(n_images) < 0.6, "AP", "PA")})
    for finding in FINDINGS:
        label = (rng.random(n_images) < 0.4).astype(float)
        logit = 1.6 * (label - 0.4) + patient_shift + rng.normal(0, 1, n_images)
        table[finding] = label
        table[f"{finding}_prob"] = 1 / (1 + np.exp(-logit))
    table.loc[rng.random(n_images) < 0.05, FINDINGS[0]] = np.nan
    return table


def time_bootstrap_alone(test: pd.DataFrame, finding: str, thresholds: dict[str, float],
                         n_resamples: int, seed: int) -> float:
    """Seconds to resample patients and compute every metric's interval for one finding."""
    start = time.perf_counter()
    target, probability = known_labels(test, finding)
    labelled = test[finding].notna().to_numpy()
    bootstrap = cluster_bootstrap(test.loc[labelled, "subject_id"], n_resamples, seed)
    replicates = {**rank_metrics(bootstrap, target, probability),
                  **additive_metrics(bootstrap, target, probability, thresholds)}
    for name, values in replicates.items():
        percentile_interval(values, name=name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=3_000)
    parser.add_argument("--resamples", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = os.getloadavg()[0]
    test = synthetic_predictions(args.images, args.patients, args.seed)
    val = synthetic_predictions(args.images // 5, args.patients // 5, args.seed + 1)
    thresholds = operating_thresholds(val)
    evaluate_predictions(test.head(500), val, n_bootstrap=50)  # warm-up: imports, caches

    evaluate_s, bootstrap_s, n_metrics = [], {f: [] for f in FINDINGS}, 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        metrics = evaluate_predictions(test, val, n_bootstrap=args.resamples, seed=args.seed)
        evaluate_s.append((time.perf_counter() - start) / len(FINDINGS))
        n_metrics = len(metrics)
        for finding in FINDINGS:
            bootstrap_s[finding].append(time_bootstrap_alone(
                test, finding, thresholds[finding], args.resamples, args.seed))
    figures = {
        "evaluate_s_per_finding": {"best": min(evaluate_s),
                                   "median": statistics.median(evaluate_s)},
        "bootstrap_s_per_finding": {f: {"best": min(s), "median": statistics.median(s)}
                                    for f, s in bootstrap_s.items()},
    }
    log.info("whole evaluation (all subsets, CIs): %.2f s per finding (median %.2f s), "
             "%d metric keys", min(evaluate_s), statistics.median(evaluate_s), n_metrics)
    for finding, seconds in bootstrap_s.items():
        log.info("bootstrap alone, %s, %d images, %d resamples: %.2f s (median %.2f s)",
                 finding, test[finding].notna().sum(), args.resamples, min(seconds),
                 statistics.median(seconds))
    summary = {
        "images": args.images, "patients": int(test["subject_id"].nunique()),
        "resamples": args.resamples, "rounds": args.rounds, "metric_keys": n_metrics,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        **figures,
    }
    print(json.dumps(summary))  # noqa: T201


if __name__ == "__main__":
    main()
