"""MIMIC-CXR (v2.0.0) layout and CSV schemas -> manifest.

Reads ``mimic-cxr-2.0.0-{chexpert|negbio}.csv.gz`` (labels per study), ``-metadata.csv.gz``
(view per image) and ``-split.csv.gz`` (official patient-disjoint split, ``validate`` -> ``val``).
The default cohort is the study's: images whose label is known (0 or 1) for both findings;
uncertain (-1) and blank labels drop the image. Labeler, label policy per finding, views and
split are options (:mod:`cxr_lightning.data.cohort`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cxr_lightning.data.cohort import LABEL_COLUMNS, CohortOptions, apply_label_policy
from cxr_lightning.data.manifest import (
    MANIFEST_COLUMNS,
    CohortReport,
    finish_manifest,
    random_patient_split,
)
from cxr_lightning.data.tables import ID, LABEL_CODE, Column, read_table

log = logging.getLogger(__name__)

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
    *,
    label_policy: str | Mapping[str, str] | None = None,
    views: Sequence[str] | None = None,
    split: str = "official",
    split_seed: int = 0,
) -> tuple[pd.DataFrame, CohortReport]:
    """Read a MIMIC-CXR tree's CSVs into the cohort's manifest and its report.

    The cohort options (see :class:`~cxr_lightning.data.cohort.CohortOptions`, whose ``to_dict()``
    is valid keyword arguments here) default to the study's cohort. Rules apply in this order,
    each image counted once in ``report.dropped`` under the first rule that drops it:
    ``study_without_labels``, ``view_not_selected``, ``edema_uncertain``, ``edema_blank``,
    ``effusion_uncertain``, ``effusion_blank``, ``not_in_split_csv`` (all keys always present).
    Images inherit their study's labels. ``random_patient`` splits all the source's patients
    (the metadata's), so a patient's split does not depend on the label policy or views.
    """
    options = CohortOptions(labeler=labeler, label_policy=label_policy, views=views, split=split,
                            split_seed=split_seed)
    root = Path(root)
    labels = read_table(mimic_csv(root, options.labeler), {
        "subject_id": ID, "study_id": ID, **{c: LABEL_CODE for c in LABEL_COLUMNS.values()}},
        unique=("subject_id", "study_id"))
    metadata = read_table(mimic_csv(root, "metadata"), {
        "dicom_id": Column("str"), "subject_id": ID, "study_id": ID,
        "ViewPosition": Column("str", blank=True)}, unique=("dicom_id",))
    report = CohortReport(images_in_source=len(metadata), options=options.to_dict())

    labels = labels[["subject_id", "study_id", *LABEL_COLUMNS.values()]].rename(
        columns={v: k for k, v in LABEL_COLUMNS.items()})
    images = metadata.assign(view=metadata["ViewPosition"].fillna("UNKNOWN").astype(str))
    images = images.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    report.dropped["study_without_labels"] = int((images["_merge"] == "left_only").sum())
    images = images[images["_merge"] == "both"].drop(columns="_merge")

    selected = (pd.Series(True, index=images.index) if options.views is None
                else images["view"].isin(options.views))
    report.dropped["view_not_selected"] = int((~selected).sum())
    images = images[selected]
    absent = sorted(set(options.views or ()) - set(images["view"]))
    if absent:
        log.warning("views %s do not occur in the labelled images of %s", absent, root)

    images = apply_label_policy(images, options.label_policy, report.dropped)
    images = images.assign(split=_split(root, images, metadata, options))
    no_split = images["split"].isna()
    report.dropped["not_in_split_csv"] = int(no_split.sum())
    images = images[~no_split]

    manifest = pd.DataFrame({
        "image_id": images["dicom_id"].astype(str),
        "subject_id": images["subject_id"].astype("int64"),
        "study_id": images["study_id"].astype("int64"),
        "path": [image_path(s, t, d, suffix) for s, t, d in
                 zip(images["subject_id"], images["study_id"], images["dicom_id"], strict=True)],
        "view": images["view"],
        "split": images["split"],
        "edema": images["edema"].astype(float),
        "effusion": images["effusion"].astype(float),
        "source": source,
    })[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    return finish_manifest(manifest, report, str(root), "MIMIC-CXR")


def _split(root: Path, images: pd.DataFrame, metadata: pd.DataFrame,
           options: CohortOptions) -> pd.Series:
    """Each image's split (train/val/test, NaN where the official split CSV lacks it)."""
    if options.split == "random_patient":
        subjects = metadata["subject_id"]
        of_subject = random_patient_split(subjects, options.split_seed).groupby(subjects).first()
        return images["subject_id"].map(of_subject)
    official = read_table(mimic_csv(root, "split"), {
        "dicom_id": Column("str"), "split": Column("str", frozenset(SPLIT_NAMES))},
        unique=("dicom_id",))
    return images["dicom_id"].map(official.set_index("dicom_id")["split"].map(SPLIT_NAMES))
