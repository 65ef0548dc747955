"""The manifest: one row per image, the contract between every data source and the pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id", "subject_id", "study_id", "path", "view", "split", *FINDINGS, "source",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class CohortReport:
    """How a source's images became the cohort: counts in, dropped by each rule, and kept.

    ``dropped`` maps each rule, in the order applied, to the images it removed (each image
    counted once), so ``images_in_cohort + sum(dropped.values()) == images_in_source``.
    ``patients`` and ``views`` (images per view) describe the cohort; ``options`` are the
    choices that made it (``SourceOptions.to_dict()``).
    """

    images_in_source: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    images_in_cohort: int = 0
    patients: int = 0
    views: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def record_cohort(self, manifest: pd.DataFrame) -> None:
        """Set the cohort's counts (images, patients, views) from its manifest."""
        self.images_in_cohort = len(manifest)
        self.patients = int(manifest["subject_id"].nunique())
        self.views = {str(k): int(v) for k, v in manifest["view"].value_counts().items()}


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
    """The study's Table 2: image counts per (edema, effusion) combination and split.

    Rows are ``"0,0"`` ... ``"1,1"``, then combinations with a masked (NaN) finding, written
    ``masked`` (e.g. ``"1,masked"``), so every image of the manifest is counted once.
    """
    text = {finding: manifest[finding].map(lambda v: "masked" if pd.isna(v) else str(int(v)))
            for finding in FINDINGS}
    combination = (text[FINDINGS[0]] + "," + text[FINDINGS[1]]).rename("(edema,effusion)")
    table = pd.crosstab(combination, manifest["split"])
    rows = sorted(table.index, key=lambda c: ("masked" in c, c))
    return table.reindex(index=rows, columns=[s for s in SPLITS if s in table.columns],
                         fill_value=0)


def finish_manifest(manifest: pd.DataFrame, report: CohortReport, origin: str,
                    dataset: str) -> tuple[pd.DataFrame, CohortReport]:
    """An adapter's last step: record the cohort in the report, validate, log one summary line."""
    report.record_cohort(manifest)
    validate_manifest(manifest, origin=origin)
    log.info("%s cohort from %s (%s): %d of %d images, %d patients kept; dropped %s", dataset,
             origin, report.options, report.images_in_cohort, report.images_in_source,
             report.patients, report.dropped)
    return manifest, report
