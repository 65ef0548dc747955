"""The ``nih`` source: NIH ChestX-ray14 layout and label table -> manifest.

``root`` holds the label table ``Data_Entry_2017*.csv`` (``Data_Entry_2017_v2020.csv`` is preferred
when both it and the original ``Data_Entry_2017.csv`` are present) and the PNG images in
``images/``, in the official archives' ``images_NNN/images/`` folders, or in any other subfolder:
images are found by file name with one walk of ``root``. Rows whose image is not on disk are
dropped and counted (``image_file_missing``).

Labels: ``Finding Labels`` is pipe-separated (``"Effusion|Infiltration"``, ``"No Finding"``);
edema is 1 when the token ``Edema`` is present, effusion when ``Effusion`` is. NIH has no
uncertain labels, so every row is known (0 or 1) for both findings.

Ids: ``image_id`` is ``Image Index``, ``subject_id`` is ``Patient ID``. NIH has no study: each
follow-up visit is one image, so ``study_id = Patient ID * 1000 + Follow-up #`` (stable, unique per
visit; NIH's largest follow-up number is below 1000).

Split: ``official`` uses NIH's patient-disjoint ``train_val_list.txt`` / ``test_list.txt`` in
``root``; ``val`` is a seeded, patient-level 1/8 of the train_val patients (NIH defines no
validation set). Images in neither list are dropped (``not_in_split_lists``). Without both lists,
``official`` falls back to ``random_patient`` (80/10/10 by patient) and logs it. Patient-level
draws are over all the label table's patients, so a patient's split does not depend on ``views``
or on which images are on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxr_lightning.data.manifest import (
    MANIFEST_COLUMNS,
    CohortReport,
    finish_manifest,
    random_patient_split,
)
from cxr_lightning.data.sources.options import SourceOptions
from cxr_lightning.data.tables import ID, Column, read_table
from cxr_lightning.errors import BadValueError, MissingFileError

log = logging.getLogger(__name__)

LABEL_TOKENS: dict[str, str] = {"edema": "Edema", "effusion": "Effusion"}
SPLIT_LISTS: dict[str, str] = {"train_val_list.txt": "train_val", "test_list.txt": "test"}
VAL_FRACTION_OF_TRAIN_VAL = 1 / 8
STUDIES_PER_PATIENT = 1000
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def nih_label_csv(root: Path) -> Path:
    """The NIH label table in ``root``; FileNotFoundError naming it and the fix if missing."""
    candidates = sorted(Path(root).glob("Data_Entry_2017*.csv"))
    if not candidates:
        raise MissingFileError(
            f"{Path(root) / 'Data_Entry_2017*.csv'} not found: data.root must point at an NIH "
            "ChestX-ray14 directory holding Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) "
            "and the images (in images/ or images_NNN/images/)"
        )
    if len(candidates) > 1:
        log.info("NIH label tables %s in %s: using %s", [c.name for c in candidates], root,
                 candidates[-1].name)
    return candidates[-1]


def index_images(root: Path) -> dict[str, str]:
    """Map each image file name under ``root`` to its path relative to ``root`` (one walk).

    When a name occurs more than once, the first path in sorted order wins and a warning says so.
    """
    index: dict[str, str] = {}
    duplicates = 0
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.name in index:
            duplicates += 1
            continue
        index[path.name] = path.relative_to(root).as_posix()
    if duplicates:
        log.warning("%d image file name(s) occur more than once under %s; the first path in "
                    "sorted order is used", duplicates, root)
    return index


def _official_split(root: Path, images: pd.DataFrame, split_seed: int) -> pd.Series:
    """NIH's official split per row, val = seeded patient-level 1/8 of train_val, NaN unlisted."""
    listed = {}
    for name, group in SPLIT_LISTS.items():
        for image_index in (root / name).read_text().split():
            listed[image_index] = group
    split = images["Image Index"].map(listed)
    train_val = split == "train_val"
    fractions = (1 - VAL_FRACTION_OF_TRAIN_VAL, VAL_FRACTION_OF_TRAIN_VAL, 0.0)
    split[train_val] = random_patient_split(images.loc[train_val, "Patient ID"], split_seed,
                                            fractions)
    return split


def build(root: str | Path, options: SourceOptions) -> tuple[pd.DataFrame, CohortReport]:
    """Read an NIH ChestX-ray14 directory into the manifest, with its cohort report.

    ``options.split`` is ``official`` (NIH's lists, falling back to ``random_patient`` without
    them) or ``random_patient``; ``split_seed`` seeds the patient-level draws. ``views`` keeps
    only those view positions (e.g. ``["PA"]``); ``None`` keeps all (NIH holds PA and AP).
    NIH's labels have no uncertain or blank values, so a label policy other than ``drop`` is
    refused rather than ignored, and so are the MIMIC-only options. Rules apply in this order,
    each image counted once in ``report.dropped`` (all keys always present):
    ``view_not_selected``, ``image_file_missing``, ``not_in_split_lists``.
    """
    options.only_mimic_options_unset("nih", "NIH ChestX-ray14")
    if set(options.label_policy.values()) != {"drop"}:
        raise BadValueError("data.label_policy does not apply to NIH ChestX-ray14: its labels "
                            "have no uncertain or blank values; remove it")
    split, split_seed, views = options.split, options.split_seed, options.views
    root = Path(root)
    images = read_table(nih_label_csv(root), {
        "Image Index": Column("str"), "Finding Labels": Column("str", blank=True),
        "Follow-up #": ID, "Patient ID": ID, "View Position": Column("str", blank=True)},
        unique=("Image Index",))
    report = CohortReport(images_in_source=len(images))
    if (images["Follow-up #"] >= STUDIES_PER_PATIENT).any():
        raise ValueError(f"{root}: a Follow-up # of {STUDIES_PER_PATIENT} or more breaks the "
                         "study_id convention Patient ID * 1000 + Follow-up #")

    have_lists = all((root / name).is_file() for name in SPLIT_LISTS)
    if split == "official" and not have_lists:
        log.info("NIH split lists %s not found in %s: using a seeded random patient-level split "
                 "(seed %d) instead of the official one", list(SPLIT_LISTS), root, split_seed)
        split = "random_patient"
    report.options = {"split": split, "split_seed": split_seed,
                      "views": None if views is None else list(views)}
    images = images.assign(
        split=_official_split(root, images, split_seed) if split == "official"
        else random_patient_split(images["Patient ID"], split_seed),
        view=images["View Position"].fillna("UNKNOWN").str.upper(),
    )

    selected = images["view"].isin(views or images["view"].unique())
    report.dropped["view_not_selected"] = int((~selected).sum())
    images = images[selected]

    paths = images["Image Index"].map(index_images(root))
    report.dropped["image_file_missing"] = int(paths.isna().sum())
    images = images[paths.notna()].assign(path=paths[paths.notna()])

    unlisted = images["split"].isna()
    report.dropped["not_in_split_lists"] = int(unlisted.sum())
    images = images[~unlisted]

    tokens = images["Finding Labels"].fillna("").str.split("|")
    manifest = pd.DataFrame({
        "image_id": images["Image Index"].astype(str),
        "subject_id": images["Patient ID"].astype("int64"),
        "study_id": images["Patient ID"].astype("int64") * STUDIES_PER_PATIENT
        + images["Follow-up #"].astype("int64"),
        "path": images["path"],
        "view": images["view"],
        "split": images["split"],
        **{finding: tokens.map(lambda labels, t=token: float(t in labels))
           for finding, token in LABEL_TOKENS.items()},
        "source": "nih",
    })[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    return finish_manifest(manifest, report, str(root), "NIH ChestX-ray14")
