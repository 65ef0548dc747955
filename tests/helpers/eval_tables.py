"""Synthetic per-image prediction tables (results.json ``predictions`` layout) for the
evaluation tests."""

import numpy as np
import pandas as pd

from cxr_lightning.findings import FINDINGS


def prediction_table(n_images: int, n_subjects: int, seed: int = 0, *, tied: bool = False,
                     masked: float = 0.05, separation: float = 1.5) -> pd.DataFrame:
    """Images of ``n_subjects`` patients with AP/PA views, labels (a fraction ``masked`` of
    edema labels NaN) and probabilities that rank positives higher by ``separation`` logits;
    ``tied`` rounds them to 1 decimal, so many scores tie."""
    rng = np.random.default_rng(seed)
    subjects = rng.integers(0, n_subjects, n_images)
    table = pd.DataFrame({"image_id": [f"img{k}" for k in range(n_images)],
                          "subject_id": subjects, "study_id": subjects * 10,
                          "view": rng.choice(["AP", "PA"], n_images, p=[0.6, 0.4])})
    for finding in FINDINGS:
        label = rng.integers(0, 2, n_images).astype(float)
        logit = rng.normal(0, 1, n_images) + separation * (label - 0.5)
        probability = 1 / (1 + np.exp(-logit))
        table[finding] = label
        table[f"{finding}_prob"] = np.round(probability, 1) if tied else probability
    table.loc[rng.random(n_images) < masked, FINDINGS[0]] = np.nan
    return table
