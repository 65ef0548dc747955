"""The ``chexpert`` source: CheXpert v1.0 (full or ``-small``) layout and label CSVs -> manifest.

The dataset folder (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``) holds ``train.csv``,
``valid.csv``, ``train/`` and ``valid/``. The CSVs' ``Path`` column is relative to the folder's
*parent* (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``). ``root`` may be
the dataset folder itself or its parent (which must then hold exactly one folder with a
``train.csv``); the CSV's leading folder name is replaced by the folder actually found, so a
renamed dataset folder works too. ``path`` is relative to ``root`` as given; ``image_id`` is the
path below the dataset folder (``train/patient00001/study1/view1_frontal.jpg``), the same for the
full and the small version. Rows whose image is not on disk are dropped (``image_file_missing``).

Ids: ``subject_id`` is the number of ``patientNNNNN``; ``study_id = subject_id * 1000 + N`` for
``studyN``. View: ``LATERAL`` for lateral images, the ``AP/PA`` column (``AP`` / ``PA``) for
frontal ones (``UNKNOWN`` when that column is blank).

Split: ``official`` maps ``train.csv`` to train, with a seeded patient-level 10% of its patients
as val, and ``valid.csv`` to test (CheXpert's own test set is not public; its validation and
training patients are disjoint). ``random_patient`` pools both CSVs into a seeded 80/10/10
patient-level split. Patient-level draws are over all the CSVs' patients, so a patient's split does
not depend on the label policy, ``views`` or which images are on disk.

Labels (per finding, :func:`cxr_lightning.data.sources.options.apply_label_policy`): CheXpert codes
1.0 positive, 0.0 negative, -1.0 uncertain and blank not mentioned. The default policy ``drop``
keeps the study's cohort: images known (0 or 1) for both findings. The policies are those of the
MIMIC adapter (``drop``, ``zeros``, ``ones``, ``mask``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_lightning.data.manifest import (
    MANIFEST_COLUMNS,
    CohortReport,
    finish_manifest,
    random_patient_split,
)
from cxr_lightning.data.sources.options import LABEL_COLUMNS, SourceOptions, apply_label_policy
from cxr_lightning.data.tables import LABEL_CODE, Column, read_table
from cxr_lightning.errors import BadValueError, MissingFileError

CSV_SPLITS: dict[str, str] = {"train.csv": "train", "valid.csv": "test"}
VAL_FRACTION_OF_TRAIN = 0.1
STUDIES_PER_PATIENT = 1000
PATH_PATTERN = r"patient(?P<patient>\d+)/study(?P<study>\d+)/"


def find_dataset_folder(root: Path) -> Path:
    """The CheXpert folder (holding ``train.csv``): ``root`` itself or its one child that does."""
    root = Path(root)
    if (root / "train.csv").is_file():
        return root
    children = sorted(p.parent for p in root.glob("*/train.csv"))
    if len(children) == 1:
        return children[0]
    if len(children) > 1:
        raise BadValueError(
            f"{root} holds several CheXpert folders {[c.name for c in children]}: point data.root "
            "at the one to use"
        )
    raise MissingFileError(
        f"{root / 'train.csv'} not found: data.root must point at a CheXpert-v1.0(-small) folder "
        "holding train.csv, valid.csv, train/ and valid/, or at the folder that contains it"
    )


def build(root: str | Path, options: SourceOptions) -> tuple[pd.DataFrame, CohortReport]:
    """Read a CheXpert directory into the manifest, with its cohort report.

    ``options.split`` is ``official`` or ``random_patient`` (module docstring); ``views`` keeps
    only those views (``PA``, ``AP``, ``LATERAL``; ``None`` keeps all); ``label_policy`` is
    ``None`` (drop uncertain or blank for either finding), one of ``drop|zeros|ones|mask`` for
    both findings, or a mapping finding -> policy (missing findings: ``drop``); the MIMIC-only
    options are refused. Rules apply in this order, each image counted once in
    ``report.dropped`` (all keys always present): ``view_not_selected``,
    ``image_file_missing``, ``edema_uncertain``, ``edema_blank``, ``effusion_uncertain``,
    ``effusion_blank``.
    """
    options.only_mimic_options_unset("chexpert", "CheXpert")
    root = Path(root)
    dataset = find_dataset_folder(root)
    frames = []
    for name, group in CSV_SPLITS.items():
        csv = dataset / name
        if not csv.is_file():
            raise MissingFileError(f"{csv} not found: a CheXpert folder holds train.csv and "
                                    "valid.csv next to train/ and valid/")
        frames.append(read_table(csv, {
            "Path": Column("str"), "Frontal/Lateral": Column("str"),
            "AP/PA": Column("str", blank=True),
            **{c: LABEL_CODE for c in LABEL_COLUMNS.values()}}, unique=("Path",))
            .assign(csv_split=group))
    images = pd.concat(frames, ignore_index=True)
    report = CohortReport(images_in_source=len(images))

    image_id = images["Path"].str.replace(r"^(?!train/|valid/)[^/]+/", "", regex=True)
    ids = image_id.str.extract(PATH_PATTERN)
    if ids.isna().any().any():
        bad = images.loc[ids.isna().any(axis=1), "Path"].iloc[0]
        raise ValueError(f"{dataset}: Path {bad!r} does not hold patientNNNNN/studyN/")
    prefix = dataset.relative_to(root)
    subject_id = ids["patient"].astype("int64")
    images = images.assign(
        image_id=image_id,
        path=[(prefix / i).as_posix() for i in image_id],
        subject_id=subject_id,
        study_id=subject_id * STUDIES_PER_PATIENT + ids["study"].astype("int64"),
        view=np.where(images["Frontal/Lateral"].str.lower() == "lateral", "LATERAL",
                      images["AP/PA"].fillna("UNKNOWN").str.upper()),
        split=_split(images["csv_split"], subject_id, options.split, options.split_seed),
    )
    report.options = {k: v for k, v in options.to_dict().items() if k != "labeler"}

    selected = images["view"].isin(options.views or images["view"].unique())
    report.dropped["view_not_selected"] = int((~selected).sum())
    images = images[selected]

    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.jpg")}
    found = images["image_id"].isin(on_disk)
    report.dropped["image_file_missing"] = int((~found).sum())
    images = images[found]

    raw = images[list(LABEL_COLUMNS.values())].set_axis(list(LABEL_COLUMNS), axis=1)
    labels = apply_label_policy(raw, options.label_policy, report.dropped)
    images = images.loc[labels.index].assign(**{f: labels[f] for f in LABEL_COLUMNS})

    manifest = images.assign(source="chexpert")[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    return finish_manifest(manifest, report, str(dataset), "CheXpert")


def _split(csv_split: pd.Series, subject_id: pd.Series, split: str, split_seed: int) -> pd.Series:
    """Each row's split: official (train.csv -> train + seeded 10% val, valid.csv -> test) or
    random_patient (80/10/10 of all patients)."""
    if split == "random_patient":
        return random_patient_split(subject_id, split_seed)
    assigned = csv_split.copy()
    train = csv_split == "train"
    assigned[train] = random_patient_split(subject_id[train], split_seed,
                                           (1 - VAL_FRACTION_OF_TRAIN, VAL_FRACTION_OF_TRAIN, 0.0))
    return assigned
