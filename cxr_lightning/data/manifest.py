"""The manifest: one row per image, the contract between every data source and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr_lightning.findings import FINDINGS

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id", "subject_id", "study_id", "path", "view", "split", *FINDINGS, "source",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class CohortReport:
    """How a source's images became the cohort: counts in, dropped by each rule, and kept."""

    images_in_source: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    images_in_cohort: int = 0


def random_patient_split(subject_ids: pd.Series, seed: int,
                         fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> pd.Series:
    """Seeded train/val/test assignment by subject: every image of a patient in one split.

    Subjects are shuffled with ``numpy.random.default_rng(seed)`` and cut at the cumulative
    fractions; the result is aligned with ``subject_ids`` and independent of its row order.
    """
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions {fractions} must be 3 non-negative numbers summing to 1")
    subjects = np.sort(subject_ids.unique())
    order = np.random.default_rng(seed).permutation(len(subjects))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(subjects)).astype(int)
    split_of_position = np.array(SPLITS)[np.searchsorted(cuts, np.arange(len(subjects)),
                                                         side="right")]
    split_of_subject = dict(zip(subjects[order], split_of_position, strict=True))
    return subject_ids.map(split_of_subject).rename("split")


def validate_manifest(manifest: pd.DataFrame, origin: str) -> None:
    """Check the manifest contract; raise ValueError naming ``origin`` and the broken rule.

    Rules: all columns present, unique image ids, known split names, labels in {0, 1, NaN},
    and no subject in two splits (patient-level splitting).
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{origin}: manifest lacks columns {missing}")
    if manifest["image_id"].duplicated().any():
        duplicated = manifest.loc[manifest["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"{origin}: image_id {duplicated!r} appears more than once")
    unknown_splits = set(manifest["split"]) - set(SPLITS)
    if unknown_splits:
        raise ValueError(f"{origin}: unknown split names {sorted(unknown_splits)}; use {SPLITS}")
    for finding in FINDINGS:
        values = manifest[finding].dropna()
        if not values.isin([0, 1]).all():
            raise ValueError(f"{origin}: column {finding!r} must hold 0, 1 or NaN")
    splits_per_subject = manifest.groupby("subject_id")["split"].nunique()
    leaking = splits_per_subject[splits_per_subject > 1]
    if len(leaking):
        raise ValueError(
            f"{origin}: {len(leaking)} subject(s) appear in more than one split; splits must be "
            "patient-level"
        )


def cohort_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The study's Table 2: image counts per (edema, effusion) combination and split."""
    known = manifest.dropna(subset=list(FINDINGS))
    combination = (known[FINDINGS[0]].astype(int).astype(str) + ","
                   + known[FINDINGS[1]].astype(int).astype(str))
    table = pd.crosstab(combination.rename("(edema,effusion)"), known["split"])
    return table.reindex(columns=[s for s in SPLITS if s in table.columns], fill_value=0)
