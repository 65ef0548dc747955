"""Deterministic generator of a small, realistic MIMIC-CXR v2.0.0-format sample.

Writes the DICOM images (``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.dcm``) and the four
``mimic-cxr-2.0.0-*.csv.gz`` tables (chexpert, negbio, metadata, split) in one of two layouts:

* ``physionet`` (default), as PhysioNet ships them: the DICOM project
  ``OUT/physionet.org/files/mimic-cxr/2.0.0/`` (``files/``, ``cxr-record-list.csv.gz``,
  ``cxr-study-list.csv.gz``) and the tables in the MIMIC-CXR-JPG project
  ``OUT/physionet.org/files/mimic-cxr-jpg/2.0.0/`` beside it;
* ``single``: everything in ``OUT``.

Edema and pleural effusion labels follow the study cohort's joint distribution and are
*visible* in the rendered images (see :mod:`cxr_lightning.data.sample.render`), so models can
learn them. The CSVs are written after all images, and a ``SAMPLE_COMPLETE`` JSON marker in the
image directory last, so a half-written sample is never mistaken for a complete one
(:func:`is_complete_sample`). The command line is :mod:`cxr_lightning.data.sample.__main__`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr_lightning.data.dicom import read_dicom_uint8
from cxr_lightning.data.manifest import SPLITS, random_patient_split
from cxr_lightning.data.sample.render import (
    DicomStyle,
    ImageSpec,
    StudyFindings,
    write_image,
)
from cxr_lightning.data.sources.mimic import RECORD_LIST, image_path, study_directory, table_name
from cxr_lightning.errors import UserError
from cxr_lightning.integrity import exclusive_lock, write_atomic
from cxr_lightning.published import TABLE2_IMAGES

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
MARKER_FILE = "SAMPLE_COMPLETE"
CHEXPERT_FILE = table_name("chexpert")
NEGBIO_FILE = table_name("negbio")
METADATA_FILE = table_name("metadata")
SPLIT_FILE = table_name("split")
CSV_FILES = (SPLIT_FILE, METADATA_FILE, NEGBIO_FILE, CHEXPERT_FILE)
"""In writing order; the chexpert labels go last."""
RECORD_LIST_FILE = RECORD_LIST
STUDY_LIST_FILE = "cxr-study-list.csv.gz"
LAYOUTS = ("physionet", "single")
PHYSIONET_DICOM_DIR = Path("physionet.org", "files", "mimic-cxr", "2.0.0")
PHYSIONET_JPG_DIR = Path("physionet.org", "files", "mimic-cxr-jpg", "2.0.0")
JPEG_QUALITY = 95

CHEXPERT_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)  # fmt: skip
"""The 14 CheXpert/NegBio label columns, in MIMIC-CXR's order and spelling."""

COHORT_COUNTS: dict[tuple[int, int], int] = TABLE2_IMAGES
"""Images per known (edema, effusion) combination in the study's cohort (its Table 2)."""

METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")

UNKNOWN_PATTERN_PROBS = (0.8, 0.08, 0.08, 0.04)
"""P(both known), P(only edema unknown), P(only effusion unknown), P(both unknown)."""
UNCERTAIN_SHARE = 0.6
"""Share of unknown values that are uncertain (-1.0) rather than blank."""
NEGBIO_DISAGREEMENT = 0.03
OTHER_FINDING_RATES: dict[str, tuple[float, float, float]] = {
    "Atelectasis": (0.22, 0.02, 0.06), "Cardiomegaly": (0.25, 0.05, 0.03),
    "Consolidation": (0.06, 0.08, 0.03), "Enlarged Cardiomediastinum": (0.04, 0.02, 0.04),
    "Fracture": (0.02, 0.01, 0.005), "Lung Lesion": (0.03, 0.005, 0.005),
    "Lung Opacity": (0.25, 0.01, 0.02), "Pleural Other": (0.01, 0.0, 0.005),
    "Pneumonia": (0.05, 0.08, 0.08), "Pneumothorax": (0.03, 0.15, 0.005),
    "Support Devices": (0.3, 0.01, 0.005),
}  # fmt: skip
"""P(1.0), P(0.0), P(-1.0) per finding other than edema/effusion/No Finding; else blank."""

VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral",
                 "LL": "left lateral", "": ""}
PROCEDURES = {"AP": "CHEST (PORTABLE AP)", "PA": "CHEST (PA AND LAT)"}


def cohort_probabilities() -> np.ndarray:
    """P of the known (edema, effusion) classes 2*edema + effusion, from :data:`COHORT_COUNTS`."""
    counts = np.array([COHORT_COUNTS[(c // 2, c % 2)] for c in range(4)], dtype=np.float64)
    return counts / counts.sum()


def sample_study_labels(rng: np.random.Generator, n_studies: int) -> np.ndarray:
    """Draw (n_studies, 2) (Edema, Pleural Effusion) labels in {1.0, 0.0, -1.0, NaN}.

    The true combination follows the cohort proportions; then, independently of it, about 20%
    of studies have one or both findings masked as uncertain (-1.0) or blank (NaN), so the
    known-known studies keep the cohort's joint distribution.
    """
    combination = rng.choice(4, size=n_studies, p=cohort_probabilities())
    labels = np.stack([combination // 2, combination % 2], axis=1).astype(np.float64)
    pattern = rng.choice(4, size=n_studies, p=UNKNOWN_PATTERN_PROBS)
    masked = np.stack([(pattern == 1) | (pattern == 3), (pattern == 2) | (pattern == 3)], axis=1)
    unknown_value = np.where(rng.random((n_studies, 2)) < UNCERTAIN_SHARE, -1.0, np.nan)
    return np.where(masked, unknown_value, labels)


OCCULT_POSITIVE_RATE = 0.12
UNREPORTED_NEGATIVE_RATE = 0.06


def render_severities(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """How strongly each study shows each finding.

    Like report-derived labels, they are imperfect: a positive is usually clear (0.4-1.0) but
    occult in ~12% of studies (0-0.15); a negative shows a mild, unreported finding in ~6%; an
    uncertain label is mild half the time. This caps the achievable AUROC near 0.9-0.95, so the
    task is learnable but not trivial.
    """
    strong = rng.uniform(0.4, 1.0, size=labels.shape)
    occult = rng.uniform(0.0, 0.15, size=labels.shape)
    positive = np.where(rng.random(labels.shape) < OCCULT_POSITIVE_RATE, occult, strong)
    mild = rng.uniform(0.15, 0.35, size=labels.shape)
    unreported = mild * (rng.random(labels.shape) < UNREPORTED_NEGATIVE_RATE)
    uncertain = mild * (rng.random(labels.shape) < 0.5)
    return np.where(labels == 1.0, positive,
                    np.where(labels == -1.0, uncertain, np.where(labels == 0.0, unreported, 0.0)))


def _other_findings(rng: np.random.Generator, n_studies: int) -> dict[str, np.ndarray]:
    values = np.array([1.0, 0.0, -1.0, np.nan])
    columns = {}
    for name, (pos, neg, unc) in OTHER_FINDING_RATES.items():
        probs = [pos, neg, unc, 1.0 - pos - neg - unc]
        columns[name] = values[rng.choice(4, size=n_studies, p=probs)]
    return columns


def _abnormal(table: pd.DataFrame) -> np.ndarray:
    """Studies with any finding positive, or any pathology uncertain (devices aside)."""
    findings = [f for f in CHEXPERT_FINDINGS if f != "No Finding"]
    pathologies = [f for f in findings if f != "Support Devices"]
    positive = table[findings].eq(1.0).any(axis=1)
    return (positive | table[pathologies].eq(-1.0).any(axis=1)).to_numpy()


def _with_no_finding(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Set No Finding to 1.0 (mostly) where nothing is positive or uncertain, else blank."""
    normal = ~_abnormal(table) & (rng.random(len(table)) < 0.85)
    table["No Finding"] = np.where(normal, 1.0, np.nan)
    return table


def _chexpert_table(studies: pd.DataFrame, labels: np.ndarray,
                    rng: np.random.Generator) -> pd.DataFrame:
    columns = _other_findings(rng, len(studies))
    columns["Edema"], columns["Pleural Effusion"] = labels[:, 0], labels[:, 1]
    columns["No Finding"] = np.full(len(studies), np.nan)
    table = pd.DataFrame({"subject_id": studies["subject_id"].to_numpy(),
                          "study_id": studies["study_id"].to_numpy(),
                          **{name: columns[name] for name in CHEXPERT_FINDINGS}})
    return _with_no_finding(table, rng)


def _negbio_table(chexpert: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Copy of the chexpert labels disagreeing on ~3% of the Edema / Pleural Effusion cells."""
    negbio = chexpert.copy()
    values = np.array([1.0, 0.0, -1.0, np.nan])
    for name in ("Edema", "Pleural Effusion"):
        current = negbio[name].to_numpy()
        code = np.where(np.isnan(current), 3, np.select([current == 1, current == 0], [0, 1], 2))
        shifted = values[(code + rng.integers(1, 4, size=len(code))) % 4]
        flip = rng.random(len(code)) < NEGBIO_DISAGREEMENT
        negbio[name] = np.where(flip, shifted, current)
    negbio.loc[_abnormal(negbio), "No Finding"] = np.nan
    return negbio


# ---------------------------------------------------------------------------- identifiers


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    return low + rng.choice(high - low, size=n, replace=False)


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    """MIMIC-style ids: five dash-separated groups of 8 lowercase hex digits, all unique."""
    while True:
        groups = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
        ids = ["-".join(f"{int(g):08x}" for g in row) for row in groups]
        if len(set(ids)) == n:
            return ids


# --------------------------------------------------------------------------------- planning


def _plan_studies(rng: np.random.Generator, n_subjects: int) -> pd.DataFrame:
    """One row per study: ids, date/time, procedure and frontal view, number of images."""
    subjects = np.sort(_unique_ints(rng, n_subjects, 10_000_000, 20_000_000))
    per_subject = rng.choice([1, 2, 3, 4], size=n_subjects, p=[0.2, 0.3, 0.3, 0.2])
    subject_id = np.repeat(subjects, per_subject)
    n_studies = len(subject_id)
    first_day = np.repeat(rng.integers(0, 365 * 88, size=n_subjects), per_subject)
    gaps = rng.integers(1, 700, size=n_studies)
    starts = np.cumsum(per_subject) - per_subject
    cumulative = np.cumsum(gaps)
    day = first_day + cumulative - np.repeat(cumulative[starts], per_subject)
    dates = [dt.date(2110, 1, 1) + dt.timedelta(days=int(d)) for d in day]
    seconds = rng.integers(0, 86400, size=n_studies)
    millis = rng.integers(0, 1000, size=n_studies)
    n_images = rng.choice([1, 2, 3], size=n_studies, p=[0.5, 0.4, 0.1])
    ap = rng.random(n_studies) < np.where(n_images == 1, 0.55, 0.2)
    frontal = np.where(ap, "AP", "PA")
    return pd.DataFrame({
        "subject_id": subject_id,
        "study_id": _unique_ints(rng, n_studies, 50_000_000, 60_000_000),
        "StudyDate": [int(d.strftime("%Y%m%d")) for d in dates],
        "StudyTime": (seconds // 3600) * 10000 + (seconds // 60 % 60) * 100 + seconds % 60
        + millis / 1000,
        "n_images": n_images,
        "frontal": frontal,
        "procedure": [PROCEDURES[v] for v in frontal],
    })


def _plan_views(rng: np.random.Generator, studies: pd.DataFrame) -> list[str]:
    """View positions of every image, study by study (frontal first)."""
    views: list[str] = []
    draws = rng.random((len(studies), 4))
    for (n_images, frontal), u in zip(studies[["n_images", "frontal"]].itertuples(index=False),
                                      draws, strict=True):
        first = "" if u[0] < 0.02 else frontal
        lateral = "LL" if u[1] < 0.12 else "LATERAL"
        third = frontal if u[2] < 0.6 else "LATERAL"
        views.extend([first, lateral, third][:n_images])
    return views


def _plan_images(rng: np.random.Generator, studies: pd.DataFrame) -> pd.DataFrame:
    """The metadata table, one row per image, sorted like MIMIC's."""
    views = np.array(_plan_views(rng, studies))
    n = len(views)
    lateral = np.isin(views, ["LATERAL", "LL"])
    rows = np.where(lateral, rng.integers(440, 561, n), rng.integers(420, 561, n))
    cols = np.where(lateral, rng.integers(340, 441, n), rng.integers(360, 501, n))
    recumbent = (views == "AP") & (rng.random(n) < 0.5)
    orientation = np.where(recumbent, "Recumbent", "Erect")
    orientation = np.where(rng.random(n) < 0.03, "", orientation)
    per_study = studies.loc[studies.index.repeat(studies["n_images"])].reset_index(drop=True)
    table = pd.DataFrame({
        "dicom_id": _dicom_ids(rng, n),
        "subject_id": per_study["subject_id"],
        "study_id": per_study["study_id"],
        "PerformedProcedureStepDescription": per_study["procedure"],
        "ViewPosition": views,
        "Rows": rows,
        "Columns": cols,
        "StudyDate": per_study["StudyDate"],
        "StudyTime": per_study["StudyTime"],
        "ProcedureCodeSequence_CodeMeaning": per_study["procedure"],
        "ViewCodeSequence_CodeMeaning": [VIEW_MEANINGS[v] for v in views],
        "PatientOrientationCodeSequence_CodeMeaning": orientation,
    })
    table = table.sort_values(["subject_id", "study_id", "dicom_id"], ignore_index=True)
    return table[list(METADATA_COLUMNS)].replace("", np.nan)


def _assign_split(rng: np.random.Generator, subjects: np.ndarray, train_fraction: float,
                  validate_fraction: float) -> dict[int, str]:
    """Patient-disjoint split: each subject goes to exactly one of train/validate/test."""
    order = rng.permutation(subjects)
    n_train = round(train_fraction * len(order))
    n_validate = round(validate_fraction * len(order))
    names = ["train"] * n_train + ["validate"] * n_validate
    names += ["test"] * (len(order) - len(names))
    return {int(s): name for s, name in zip(order, names, strict=True)}


def _study_findings(rng: np.random.Generator, chexpert: pd.DataFrame) -> list[StudyFindings]:
    """What each study's images show, from its labels (uncertain ones half the time, mildly)."""
    labels = chexpert[["Edema", "Pleural Effusion"]].to_numpy()
    severity = render_severities(rng, labels)
    sides = rng.random(len(chexpert))
    return [
        StudyFindings(edema=float(edema), effusion=float(effusion),
                      effusion_right=bool(side < 0.8),
                      effusion_left=bool(side < 0.55 or side >= 0.8),
                      cardiomegaly=bool(cardio == 1.0), support_devices=bool(devices == 1.0))
        for (edema, effusion), side, cardio, devices in zip(
            severity, sides, chexpert["Cardiomegaly"], chexpert["Support Devices"], strict=True)
    ]


def _dicom_styles(rng: np.random.Generator, n: int, compressed_fraction: float) -> list[DicomStyle]:
    """Storage variants: ~20% MONOCHROME1, ~30% rescaled, ~50% windowed, some compressed."""
    u = rng.random((n, 5))
    slopes = np.where(u[:, 1] < 0.15, 1, np.where(u[:, 1] < 0.3, 2, 0))
    compression = np.where(u[:, 3] >= compressed_fraction, "",
                           np.where(u[:, 4] < 0.5, "rle", "j2k"))
    return [
        DicomStyle(photometric="MONOCHROME1" if p < 0.2 else "MONOCHROME2",
                   rescale_slope=int(s) or None, window=bool(w < 0.5), compression=str(c))
        for p, s, w, c in zip(u[:, 0], slopes, u[:, 2], compression, strict=True)
    ]


def _image_specs(root: Path, seed: int, images: pd.DataFrame, chexpert: pd.DataFrame,
                 rng: np.random.Generator, compressed_fraction: float) -> list[ImageSpec]:
    findings = dict(zip(chexpert["study_id"], _study_findings(rng, chexpert), strict=True))
    subjects = chexpert["subject_id"].unique()
    subject_index = {int(s): i for i, s in enumerate(subjects)}
    sexes = dict(zip(subjects, rng.choice(["F", "M"], size=len(subjects)), strict=True))
    styles = _dicom_styles(rng, len(images), compressed_fraction)
    specs = []
    for index, (row, style) in enumerate(zip(images.itertuples(index=False), styles,
                                             strict=True)):
        view = "" if pd.isna(row.ViewPosition) else str(row.ViewPosition)
        specs.append(ImageSpec(
            path=root / image_path(row.subject_id, row.study_id, row.dicom_id),
            dicom_id=row.dicom_id, subject_id=int(row.subject_id), study_id=int(row.study_id),
            view=view, rows=int(row.Rows), cols=int(row.Columns),
            study_date=int(row.StudyDate), study_time=float(row.StudyTime),
            procedure=row.PerformedProcedureStepDescription, patient_sex=str(sexes[row.subject_id]),
            findings=findings[row.study_id], style=style,
            anatomy_seed=(seed, 1, subject_index[int(row.subject_id)]), image_seed=(seed, 2, index),
        ))
    return specs


# ---------------------------------------------------------------------------------- writing


def _write_csv_gz(table: pd.DataFrame, path: Path) -> None:
    """Gzip-compressed CSV, byte-identical for identical tables (no timestamp in the header)."""
    text = table.to_csv(index=False, lineterminator="\n")
    write_atomic(path, gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))


def _write_images(specs: Sequence[ImageSpec], workers: int) -> None:
    if workers <= 1:
        for spec in specs:
            write_image(spec)
        return
    # spawn, not fork: callers (training processes) may hold threads, e.g. cv2's or torch's
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for _ in pool.map(write_image, specs, chunksize=max(1, len(specs) // (8 * workers))):
            pass


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sample_directories(out_dir: Path, layout: str = "physionet") -> tuple[Path, Path]:
    """(image directory, table directory) of a sample written to ``out_dir`` in ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out_dir = Path(out_dir)
    if layout == "single":
        return out_dir, out_dir
    return out_dir / PHYSIONET_DICOM_DIR, out_dir / PHYSIONET_JPG_DIR


def sample_out_dir(images_root: Path) -> tuple[Path, str]:
    """(``out_dir``, layout) that put a sample's images in ``images_root``: a PhysioNet DICOM
    project path (``.../physionet.org/files/mimic-cxr/2.0.0``) means the PhysioNet layout."""
    images_root = Path(images_root)
    if images_root.parts[-len(PHYSIONET_DICOM_DIR.parts):] == PHYSIONET_DICOM_DIR.parts:
        return images_root.parents[len(PHYSIONET_DICOM_DIR.parts) - 1], "physionet"
    return images_root, "single"


def _prepare_out_dir(images: Path, tables: Path, overwrite: bool) -> None:
    """Refuse to overwrite an existing sample unless asked; never touch real MIMIC data."""
    present = [name for name in CSV_FILES if (tables / name).exists()]
    if not present:
        return
    if not overwrite:
        raise FileExistsError(f"{tables} already contains a MIMIC-CXR sample ({present[0]}); "
                              "pass overwrite=True (--overwrite) to replace it")
    if not (images / MARKER_FILE).exists():
        raise FileExistsError(f"{tables} contains MIMIC-CXR tables but {images} has no "
                              f"{MARKER_FILE} marker: not a generated sample, refusing to "
                              "overwrite it")
    logger.info("Overwriting the existing sample in %s", images)
    (images / MARKER_FILE).unlink()
    for name in (*CSV_FILES, RECORD_LIST_FILE, STUDY_LIST_FILE):
        (tables / name).unlink(missing_ok=True)
        (images / name).unlink(missing_ok=True)
    shutil.rmtree(images / "files", ignore_errors=True)


def is_complete_sample(root: Path) -> bool:
    """True when ``root`` (the image directory) holds a fully written sample: a valid marker
    and all four tables where the marker says they are."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or "n_images" not in marker:
        return False
    tables = root / marker.get("tables", ".")
    return all((tables / name).is_file() for name in CSV_FILES)


def _write_jpgs(specs: Sequence[ImageSpec], images_dir: Path, jpg_dir: Path) -> None:
    """Each DICOM as MIMIC-CXR-JPG has it: histogram-equalised 8 bit, JPEG quality 95."""
    for spec in specs:
        target = jpg_dir / spec.path.relative_to(images_dir).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = read_dicom_uint8(spec.path, histogram_equalization=True)
        if not cv2.imwrite(str(target), pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"could not write {target}")


def _record_lists(images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MIMIC-CXR's ``cxr-record-list`` (one row per image) and ``cxr-study-list`` tables."""
    records = images[["subject_id", "study_id", "dicom_id"]].copy()
    records["path"] = [image_path(s, t, d) for s, t, d in records.itertuples(index=False)]
    studies = records[["subject_id", "study_id"]].drop_duplicates(ignore_index=True)
    studies["path"] = [f"{study_directory(s, t)}.txt" for s, t in studies.itertuples(index=False)]
    return records, studies


@dataclass(frozen=True)
class SamplePlan:
    """Everything a sample holds but its pixels: the four tables, and the generator the images
    are rendered from (drawn after the tables, so the tables do not depend on rendering)."""

    n_subjects: int
    images: pd.DataFrame
    """The metadata table, one row per image."""
    chexpert: pd.DataFrame
    negbio: pd.DataFrame
    split: pd.DataFrame
    render_rng: np.random.Generator


def plan_sample(n_subjects: int, seed: int, train_fraction: float = 0.7,
                validate_fraction: float = 0.1) -> SamplePlan:
    """The sample of ``n_subjects`` patients drawn from ``seed``: ids, views, labels, splits."""
    label_rng, plan_rng, render_rng, split_rng, negbio_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    studies = _plan_studies(plan_rng, n_subjects)
    images = _plan_images(plan_rng, studies)
    chexpert = _chexpert_table(studies, sample_study_labels(label_rng, len(studies)), label_rng)
    chexpert = chexpert.sort_values(["subject_id", "study_id"], ignore_index=True)
    negbio = _negbio_table(chexpert, negbio_rng)
    split_of = _assign_split(split_rng, chexpert["subject_id"].unique(), train_fraction,
                             validate_fraction)
    split = images[["dicom_id", "study_id", "subject_id"]].copy()
    split["split"] = split["subject_id"].map(split_of)
    return SamplePlan(n_subjects, images, chexpert, negbio, split[list(SPLIT_COLUMNS)],
                      render_rng)


def multiclass_gap(plan: SamplePlan) -> str | None:
    """Why the study's cohort of ``plan`` (chexpert labels, both findings known, all views) could
    not train a multiclass model under either split a reader takes by default (the split CSV,
    ``official``; ``random_patient`` with ``data.split_seed=0``), or None: a split without images,
    or a training split without an (edema, effusion) combination."""
    labels = plan.chexpert[["study_id", "Edema", "Pleural Effusion"]]
    known = labels[labels[["Edema", "Pleural Effusion"]].isin([0.0, 1.0]).all(axis=1)]
    images = plan.images[["dicom_id", "subject_id", "study_id"]].merge(known, on="study_id")
    splits = {
        "the split CSV (data.split=official)":
            images["dicom_id"].map(plan.split.set_index("dicom_id")["split"])
            .replace({"validate": "val"}),
        "data.split=random_patient (split_seed 0)":
            images["subject_id"].map(random_patient_split(plan.images["subject_id"], 0)
                                     .groupby(plan.images["subject_id"]).first()),
    }
    for name, split in splits.items():
        empty = [s for s in SPLITS if not (split == s).any()]
        if empty:
            return f"{name} leaves {empty} without images"
        train = images[split == "train"]
        present = set(zip(train["Edema"].astype(int), train["Pleural Effusion"].astype(int),
                          strict=True))
        missing = sorted({(e, f) for e in (0, 1) for f in (0, 1)} - present)
        if missing:
            return f"{name} has no training image with (edema, effusion) = {missing}"
    return None


def trainable_plan(n_subjects: int, seed: int, train_fraction: float = 0.7,
                   validate_fraction: float = 0.1) -> SamplePlan:
    """The plan of the smallest sample of at least ``n_subjects`` patients (from ``seed``) that
    a multiclass model can train on (:func:`multiclass_gap`); logs it when that is more than
    ``n_subjects``. The sizes tried go up one subject at a time."""
    plan = plan_sample(n_subjects, seed, train_fraction, validate_fraction)
    first_gap = gap = multiclass_gap(plan)
    while gap is not None:
        plan = plan_sample(plan.n_subjects + 1, seed, train_fraction, validate_fraction)
        gap = multiclass_gap(plan)
    if first_gap is not None:
        logger.warning("Grew the sample from %d to %d subjects (seed %d) so that a multiclass "
                       "model can train on it: with %d, %s", n_subjects, plan.n_subjects, seed,
                       n_subjects, first_gap)
    return plan


def generate_sample(out_dir: Path, n_subjects: int = 400, seed: int = 0, *,
                    overwrite: bool = False, train_fraction: float = 0.7,
                    validate_fraction: float = 0.1, compressed_fraction: float = 0.25,
                    workers: int | None = None, layout: str = "physionet",
                    jpg: bool = False, trainable: bool = False) -> Path:
    """Write a deterministic MIMIC-CXR-format sample of ``n_subjects`` patients to ``out_dir``
    in ``layout`` (see the module docstring); returns the image directory (``data.root``).

    Same ``seed`` and arguments give byte-identical CSVs and identical pixel data
    (``workers``, ``compressed_fraction`` and ``layout`` do not change any pixel or label).
    ``workers`` defaults to the CPU count (at most 8). With ``jpg`` (PhysioNet layout) the
    MIMIC-CXR-JPG project also gets every image as ``.jpg``, converted the way MIMIC-CXR-JPG was
    (histogram-equalised 8 bit, quality 95), so ``data=mimic_cxr_jpg`` can read it. With
    ``trainable`` the sample grows beyond ``n_subjects`` where a multiclass model could not
    train on it (:func:`trainable_plan`; the marker records both counts). Raises
    FileExistsError if ``out_dir`` already holds the tables, unless ``overwrite``.
    """
    if jpg and layout != "physionet":
        raise ValueError("jpg=True writes the MIMIC-CXR-JPG project: it needs layout='physionet'")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be positive, got {n_subjects}")
    if not (train_fraction > 0 and validate_fraction >= 0
            and train_fraction + validate_fraction < 1):
        raise ValueError("need 0 < train_fraction, 0 <= validate_fraction and a test share > 0")
    images_dir, tables_dir = sample_directories(out_dir, layout)
    _prepare_out_dir(images_dir, tables_dir, overwrite)
    images_dir.mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan = (trainable_plan if trainable else plan_sample)(n_subjects, seed, train_fraction,
                                                          validate_fraction)
    images, chexpert = plan.images, plan.chexpert
    specs = _image_specs(images_dir, seed, images, chexpert, plan.render_rng, compressed_fraction)
    n_workers = min(_available_cpus(), 8) if workers is None else workers
    logger.info("Rendering %d images of %d studies (%d subjects) with %d worker(s)",
                len(specs), len(chexpert), plan.n_subjects, n_workers)
    _write_images(specs, n_workers)

    if jpg:
        _write_jpgs(specs, images_dir, tables_dir)
    if layout == "physionet":
        records, study_list = _record_lists(images)
        _write_csv_gz(records, images_dir / RECORD_LIST_FILE)
        _write_csv_gz(study_list, images_dir / STUDY_LIST_FILE)
    for table, name in ((plan.split, SPLIT_FILE), (images, METADATA_FILE),
                        (plan.negbio, NEGBIO_FILE), (chexpert, CHEXPERT_FILE)):
        _write_csv_gz(table, tables_dir / name)
    marker = {"n_subjects": plan.n_subjects, "n_subjects_requested": n_subjects, "seed": seed,
              "generator_version": GENERATOR_VERSION, "n_studies": len(chexpert),
              "n_images": len(images), "layout": layout,
              "tables": os.path.relpath(tables_dir, images_dir)}
    write_atomic(images_dir / MARKER_FILE, json.dumps(marker, indent=2).encode() + b"\n")
    logger.info("Wrote sample to %s in %.1f s (images in %s, tables in %s)", out_dir,
                time.perf_counter() - started, images_dir, tables_dir)
    return images_dir


def ensure_sample(out_dir: Path, layout: str = "physionet", **options) -> Path:
    """The image directory of the complete sample in ``out_dir``, generated first if missing
    (``options``: :func:`generate_sample`'s).

    Atomic and once: under a lock beside ``out_dir`` (jobs started together wait for one
    generation), into a temporary sibling directory renamed to ``out_dir`` when complete, so no
    process ever reads a half-written sample nor rewrites one another is reading.
    """
    out_dir = Path(out_dir)
    images_dir, _ = sample_directories(out_dir, layout)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if is_complete_sample(images_dir):
            return images_dir
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"{out_dir} holds an incomplete sample (an interrupted generation "
                            "by an older version): delete that directory and run again")
        for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
            shutil.rmtree(stale)  # a generation killed before its rename
        partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
        logger.info("Generating the MIMIC-CXR-format sample (%s layout) into %s", layout,
                    out_dir)
        generate_sample(partial, layout=layout, **options)
        os.replace(partial, out_dir)  # a missing or empty out_dir is replaced whole
    return images_dir
