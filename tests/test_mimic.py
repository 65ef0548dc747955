"""MIMIC adapter: the study's cohort and the patient-level split, checked against the raw CSVs."""

import gzip

import numpy as np
import pandas as pd
import pytest

from cxr_lightning.data.manifest import (
    MANIFEST_COLUMNS,
    cohort_table,
    random_patient_split,
    validate_manifest,
)
from cxr_lightning.data.mimic import build_mimic_manifest


def _raw(root, name):
    with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "rt") as handle:
        return pd.read_csv(handle)


@pytest.mark.parametrize("labeler", ["chexpert", "negbio"])
def test_cohort_is_images_with_both_findings_known(small_sample, labeler):
    manifest, report = build_mimic_manifest(small_sample, labeler=labeler)
    labels = _raw(small_sample, labeler)
    metadata = _raw(small_sample, "metadata")
    known = labels[labels["Edema"].isin([0, 1]) & labels["Pleural Effusion"].isin([0, 1])]
    expected = metadata.merge(known, on=["subject_id", "study_id"])
    assert sorted(manifest["image_id"]) == sorted(expected["dicom_id"])
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    row = manifest.iloc[0]
    source = expected.set_index("dicom_id").loc[row["image_id"]]
    assert row["edema"] == source["Edema"] and row["effusion"] == source["Pleural Effusion"]
    assert (small_sample / row["path"]).is_file()
    assert report.images_in_source == len(metadata)
    assert report.images_in_cohort + sum(report.dropped.values()) == len(metadata)
    assert report.dropped["edema_uncertain"] + report.dropped["edema_blank"] > 0
    assert report.patients == manifest["subject_id"].nunique()


def test_split_is_the_official_one_and_patient_level(small_sample):
    manifest, _ = build_mimic_manifest(small_sample)
    official = _raw(small_sample, "split").set_index("dicom_id")["split"]
    mapped = official.loc[manifest["image_id"]].replace({"validate": "val"})
    assert (manifest["split"].to_numpy() == mapped.to_numpy()).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1


def test_validation_rejects_a_subject_in_two_splits(small_sample):
    manifest, _ = build_mimic_manifest(small_sample)
    subject = manifest.loc[manifest["split"] == "train", "subject_id"].iloc[0]
    leaked = pd.concat([manifest, manifest[manifest["subject_id"] == subject].assign(
        split="test", image_id=lambda d: d["image_id"] + "-copy")])
    with pytest.raises(ValueError, match="more than one split"):
        validate_manifest(leaked, origin="leak-test")


def test_cohort_table_counts_combinations_per_split(small_sample):
    manifest, _ = build_mimic_manifest(small_sample)
    table = cohort_table(manifest)
    assert table.to_numpy().sum() == len(manifest)
    train = manifest[manifest["split"] == "train"]
    both = ((train["edema"] == 1) & (train["effusion"] == 1)).sum()
    assert table.loc["1,1", "train"] == both


def test_missing_csv_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2.0.0-chexpert.csv.gz.*data.root"):
        build_mimic_manifest(tmp_path)


def test_random_patient_split_is_seeded_patient_level_and_proportional():
    subjects = pd.Series(np.repeat(np.arange(1000), 3))  # 3 images per patient
    split = random_patient_split(subjects, seed=5)
    assert split.groupby(subjects).nunique().max() == 1
    per_subject = split.groupby(subjects).first().value_counts()
    assert (per_subject["train"], per_subject["val"], per_subject["test"]) == (800, 100, 100)
    assert split.equals(random_patient_split(subjects, seed=5))
    assert not split.equals(random_patient_split(subjects, seed=6))
    shuffled = subjects.sample(frac=1, random_state=0)
    assert random_patient_split(shuffled, seed=5).sort_index().equals(split)
