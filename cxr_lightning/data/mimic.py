"""MIMIC-CXR (v2.0.0) layout and CSV schemas -> manifest.

Reads ``mimic-cxr-2.0.0-{chexpert|negbio}.csv.gz`` (labels per study), ``-metadata.csv.gz``
(view per image) and ``-split.csv.gz`` (official patient-disjoint split, ``validate`` -> ``val``).
The default cohort is the study's: images whose label is known (0 or 1) for both findings;
uncertain (-1) and blank labels drop the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxr_lightning.data.manifest import MANIFEST_COLUMNS, CohortReport, validate_manifest
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

LABEL_COLUMNS: dict[str, str] = {"edema": "Edema", "effusion": "Pleural Effusion"}
LABELERS: tuple[str, ...] = ("chexpert", "negbio")
SPLIT_NAMES: dict[str, str] = {"train": "train", "validate": "val", "test": "test"}


def mimic_csv(root: Path, name: str) -> Path:
    """Path of one of the MIMIC-CXR CSVs; FileNotFoundError naming it and the fix if missing."""
    path = Path(root) / f"mimic-cxr-2.0.0-{name}.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: data.root must point at a MIMIC-CXR (or MIMIC-CXR-JPG) directory "
            f"holding mimic-cxr-2.0.0-{name}.csv.gz next to files/"
        )
    return path


def image_path(subject_id: int, study_id: int, dicom_id: str, suffix: str = ".dcm") -> str:
    """MIMIC's relative image path: files/p{2 digits}/p{subject}/s{study}/{dicom_id}{suffix}."""
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}{suffix}"


def build_mimic_manifest(
    root: str | Path,
    labeler: str = "chexpert",
    source: str = "mimic_cxr",
    suffix: str = ".dcm",
) -> tuple[pd.DataFrame, CohortReport]:
    """Read a MIMIC-CXR tree's CSVs into the manifest of the study's cohort, with its report."""
    if labeler not in LABELERS:
        raise ValueError(f"data.labeler={labeler!r}: expected one of {LABELERS}")
    root = Path(root)
    labels = pd.read_csv(mimic_csv(root, labeler))
    metadata = pd.read_csv(mimic_csv(root, "metadata"),
                           usecols=["dicom_id", "subject_id", "study_id", "ViewPosition"])
    split = pd.read_csv(mimic_csv(root, "split"), usecols=["dicom_id", "split"])
    report = CohortReport(images_in_source=len(metadata))

    labels = labels[["subject_id", "study_id", *LABEL_COLUMNS.values()]].rename(
        columns={v: k for k, v in LABEL_COLUMNS.items()})
    images = metadata.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    report.dropped["study_without_labels"] = int((images["_merge"] == "left_only").sum())
    images = images[images["_merge"] == "both"].drop(columns="_merge")

    for finding in FINDINGS:
        unknown = ~images[finding].isin([0.0, 1.0])
        report.dropped[f"{finding}_uncertain_or_blank"] = int(unknown.sum())
        images = images[~unknown]

    images = images.merge(split, on="dicom_id", how="left")
    no_split = images["split"].isna()
    report.dropped["not_in_split_csv"] = int(no_split.sum())
    images = images[~no_split]

    manifest = pd.DataFrame({
        "image_id": images["dicom_id"].astype(str),
        "subject_id": images["subject_id"].astype("int64"),
        "study_id": images["study_id"].astype("int64"),
        "path": [image_path(s, t, d, suffix) for s, t, d in
                 zip(images["subject_id"], images["study_id"], images["dicom_id"], strict=True)],
        "view": images["ViewPosition"].fillna("UNKNOWN").astype(str),
        "split": images["split"].map(SPLIT_NAMES),
        "edema": images["edema"].astype(float),
        "effusion": images["effusion"].astype(float),
        "source": source,
    })[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    report.images_in_cohort = len(manifest)
    validate_manifest(manifest, origin=str(root))
    log.info("MIMIC-CXR cohort from %s (%s labels): %d of %d images kept; dropped %s",
             root, labeler, report.images_in_cohort, report.images_in_source, report.dropped)
    return manifest, report
