"""The ``mimic_cxr`` source (and ``sample``, the generated sample read the same way): MIMIC-CXR
(v2.0.0) layout and CSV schemas -> manifest.

PhysioNet ships MIMIC-CXR as two projects (:class:`MimicLayout`): the DICOM project
(``physionet.org/files/mimic-cxr/<version>/``: ``files/`` and ``cxr-record-list.csv.gz``, the
image paths) and MIMIC-CXR-JPG (``physionet.org/files/mimic-cxr-jpg/<version>/``), which holds
the four tables read here: ``mimic-cxr-2.0.0-{chexpert|negbio}.csv.gz`` (labels per study),
``-metadata.csv.gz`` (view per image) and ``-split.csv.gz`` (official patient-disjoint split,
``validate`` -> ``val``). A single directory holding ``files/`` and the four tables works too.
The default cohort is the study's: images whose label is known (0 or 1) for both findings;
uncertain (-1) and blank labels drop the image. Labeler, label policy per finding, views and
split are options (:class:`~cxr_lightning.data.sources.options.SourceOptions`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr_lightning.data.manifest import (
    MANIFEST_COLUMNS,
    CohortReport,
    finish_manifest,
    random_patient_split,
)
from cxr_lightning.data.sources.options import LABEL_COLUMNS, SourceOptions, apply_label_policy
from cxr_lightning.data.tables import ID, LABEL_CODE, Column, read_table
from cxr_lightning.errors import UserError

log = logging.getLogger(__name__)

SPLIT_NAMES: dict[str, str] = {"train": "train", "validate": "val", "test": "test"}
TABLES: tuple[str, ...] = ("chexpert", "negbio", "metadata", "split")
"""The four MIMIC-CXR-JPG tables, ``mimic-cxr-2.0.0-{name}.csv.gz``."""
RECORD_LIST = "cxr-record-list.csv.gz"
"""MIMIC-CXR's (DICOM project's) list of images: subject_id, study_id, dicom_id, path."""
PHYSIONET_VERSIONS: tuple[str, ...] = ("2.1.0", "2.0.0")
PROJECTS = {"dicom": "MIMIC-CXR (physionet.org/files/mimic-cxr/<version>/)",
            "jpg": "MIMIC-CXR-JPG (physionet.org/files/mimic-cxr-jpg/<version>/)"}


class MissingDataError(UserError, FileNotFoundError):
    """A dataset file or directory the configuration points at is absent: a user error, whose
    message names what is missing, where it was looked for and where it comes from."""


def table_name(name: str) -> str:
    """File name of one of the four MIMIC-CXR-JPG tables."""
    return f"mimic-cxr-2.0.0-{name}.csv.gz"


@dataclass(frozen=True)
class MimicLayout:
    """Where a MIMIC-CXR download keeps its images and its tables.

    ``images`` holds ``files/`` (and, for the DICOM project, :data:`RECORD_LIST`); ``labels``
    holds the four ``mimic-cxr-2.0.0-*.csv.gz`` tables (the same directory in a single-directory
    layout, the sibling MIMIC-CXR-JPG project in PhysioNet's).
    """

    images: Path
    labels: Path

    def table(self, name: str) -> Path:
        """Path of one of the four tables (:data:`TABLES`)."""
        return self.labels / table_name(name)

    @property
    def record_list(self) -> Path | None:
        """The DICOM project's image list, where present."""
        path = self.images / RECORD_LIST
        return path if path.is_file() else None


def label_root_candidates(root: Path) -> list[Path]:
    """Where the tables may be when ``labels_root`` is unset: ``root`` itself, then the sibling
    MIMIC-CXR-JPG project of a PhysioNet download (``.../files/mimic-cxr/<v>`` ->
    ``.../files/mimic-cxr-jpg/<v>``, the same version first, then 2.1.0 and 2.0.0)."""
    candidates = [root]
    if root.parent.name == "mimic-cxr":
        versions = dict.fromkeys([root.name, *PHYSIONET_VERSIONS])
        candidates += [root.parent.parent / "mimic-cxr-jpg" / v for v in versions]
    return candidates


def resolve_layout(root: str | Path, labels_root: str | Path | None = None,
                   needed: Sequence[str] = ("chexpert", "metadata", "split")) -> MimicLayout:
    """The layout of a MIMIC-CXR download, or :class:`MissingDataError` naming both roots, the
    missing files and the PhysioNet project each comes from.

    ``root`` (``data.root``, ``MIMIC_CXR_ROOT``) must hold ``files/``. The ``needed`` tables
    are read from ``labels_root`` (``data.labels_root``, ``MIMIC_CXR_JPG_ROOT``) when given, else
    from the first of :func:`label_root_candidates` that holds them all.
    """
    root = Path(root)
    candidates = [Path(labels_root)] if labels_root is not None else label_root_candidates(root)
    labels = next((c for c in candidates if all((c / table_name(n)).is_file() for n in needed)),
                  None)
    if (root / "files").is_dir() and labels is not None:
        return MimicLayout(images=root, labels=labels)
    problems = []
    if not (root / "files").is_dir():
        problems.append(f"  images: {root / 'files'} is not a directory (data.root, or "
                        f"MIMIC_CXR_ROOT: the {PROJECTS['dicom']} directory holding files/ and "
                        f"{RECORD_LIST}; for .jpg images, data=mimic_cxr_jpg)")
    if labels is None:
        closest = max(candidates, key=lambda c: sum((c / table_name(n)).is_file()
                                                    for n in needed))
        missing = [table_name(n) for n in needed if not (closest / table_name(n)).is_file()]
        looked = ", ".join(str(c) for c in candidates)
        problems.append(
            f"  tables: {', '.join(missing)} not found (looked in {looked}). They ship with "
            f"{PROJECTS['jpg']}: download them there, next to the DICOM project, or set "
            "data.labels_root (or MIMIC_CXR_JPG_ROOT) to the directory that holds them")
    raise MissingDataError("MIMIC-CXR is not where the configuration points:\n"
                           + "\n".join(problems))


def needed_tables(options: SourceOptions) -> tuple[str, ...]:
    """The tables a cohort under ``options`` reads: its labeler's, the metadata, and the
    official split's when that is the split."""
    return (options.labeler, "metadata", *(["split"] if options.split == "official" else []))


def study_directory(subject_id: int, study_id: int) -> str:
    """MIMIC's relative study directory: files/p{2 digits}/p{subject}/s{study}."""
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study_id}"


def image_path(subject_id: int, study_id: int, dicom_id: str, suffix: str = ".dcm") -> str:
    """MIMIC's relative image path: files/p{2 digits}/p{subject}/s{study}/{dicom_id}{suffix}."""
    return f"{study_directory(subject_id, study_id)}/{dicom_id}{suffix}"


def build(root: str | Path, options: SourceOptions) -> tuple[pd.DataFrame, CohortReport]:
    """The ``mimic_cxr`` source: MIMIC-CXR's DICOM project (see :func:`read_mimic`)."""
    return read_mimic(root, options, "mimic_cxr", ".dcm")


def build_sample(root: str | Path, options: SourceOptions) -> tuple[pd.DataFrame, CohortReport]:
    """The ``sample`` source: the generated sample (:mod:`cxr_lightning.data.sample`), read as
    MIMIC-CXR's DICOM project is, under its own source name (and so its own caches)."""
    return read_mimic(root, options, "sample", ".dcm")


def read_mimic(root: str | Path, options: SourceOptions, source: str,
               suffix: str) -> tuple[pd.DataFrame, CohortReport]:
    """Read a MIMIC-CXR download's tables into the cohort's manifest and its report.

    ``root`` holds ``files/``; the tables come from ``options.labels_root`` or are found as
    :func:`resolve_layout` says. Image paths come from the DICOM project's
    :data:`RECORD_LIST` when ``root`` holds it and ``suffix`` is ``.dcm`` (an image it does not
    list is dropped as ``not_in_record_list``), else from MIMIC's naming rule
    (:func:`image_path`) with ``suffix``; ``source`` names the manifest's source.

    The options default to the study's cohort. Rules apply in this order, each image counted
    once in ``report.dropped`` under the first rule that drops it: ``study_without_labels``,
    ``view_not_selected``, ``edema_uncertain``, ``edema_blank``, ``effusion_uncertain``,
    ``effusion_blank``, ``not_in_split_csv``, ``not_in_record_list`` (all keys always present).
    Images inherit their study's labels. ``random_patient`` splits all the source's patients
    (the metadata's), so a patient's split does not depend on the label policy or views.
    """
    root = Path(root)
    layout = resolve_layout(root, options.labels_root, needed_tables(options))
    labels = read_table(layout.table(options.labeler), {
        "subject_id": ID, "study_id": ID, **{c: LABEL_CODE for c in LABEL_COLUMNS.values()}},
        unique=("subject_id", "study_id"))
    metadata = read_table(layout.table("metadata"), {
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
    images = images.assign(split=_split(layout, images, metadata, options))
    no_split = images["split"].isna()
    report.dropped["not_in_split_csv"] = int(no_split.sum())
    images = images[~no_split]
    images = images.assign(path=_image_paths(layout, images, suffix))
    unlisted = images["path"].isna()
    report.dropped["not_in_record_list"] = int(unlisted.sum())
    images = images[~unlisted]

    manifest = pd.DataFrame({
        "image_id": images["dicom_id"].astype(str),
        "subject_id": images["subject_id"].astype("int64"),
        "study_id": images["study_id"].astype("int64"),
        "path": images["path"],
        "view": images["view"],
        "split": images["split"],
        "edema": images["edema"].astype(float),
        "effusion": images["effusion"].astype(float),
        "source": source,
    })[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    return finish_manifest(manifest, report, str(root), "MIMIC-CXR")


def _image_paths(layout: MimicLayout, images: pd.DataFrame, suffix: str) -> pd.Series:
    """Each image's path relative to ``layout.images`` (NaN where the record list lacks it)."""
    if layout.record_list is not None and suffix == ".dcm":
        records = read_table(layout.record_list, {"dicom_id": Column("str"),
                                                  "path": Column("str")}, unique=("dicom_id",))
        return images["dicom_id"].map(records.set_index("dicom_id")["path"])
    return pd.Series([image_path(s, t, d, suffix) for s, t, d in zip(
        images["subject_id"], images["study_id"], images["dicom_id"], strict=True)],
        index=images.index, dtype=object)


def _split(layout: MimicLayout, images: pd.DataFrame, metadata: pd.DataFrame,
           options: SourceOptions) -> pd.Series:
    """Each image's split (train/val/test, NaN where the official split CSV lacks it)."""
    if options.split == "random_patient":
        subjects = metadata["subject_id"]
        of_subject = random_patient_split(subjects, options.split_seed).groupby(subjects).first()
        return images["subject_id"].map(of_subject)
    official = read_table(layout.table("split"), {
        "dicom_id": Column("str"), "split": Column("str", frozenset(SPLIT_NAMES))},
        unique=("dicom_id",))
    return images["dicom_id"].map(official.set_index("dicom_id")["split"].map(SPLIT_NAMES))
