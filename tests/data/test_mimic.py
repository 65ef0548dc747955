"""MIMIC adapter: the study's cohort and the patient-level split, checked against the raw CSVs."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_lightning.data.manifest import (
    MANIFEST_COLUMNS,
    cohort_table,
    random_patient_split,
    validate_manifest,
)
from cxr_lightning.data.sources.mimic import MissingDataError, resolve_layout
from cxr_lightning.data.sources.mimic import build as build_mimic
from cxr_lightning.data.sources.options import SourceOptions
from tests.helpers.samples import sample_tables


def _raw(root, name):
    with gzip.open(sample_tables(root) / f"mimic-cxr-2.0.0-{name}.csv.gz", "rt") as handle:
        return pd.read_csv(handle)


@pytest.mark.parametrize("labeler", ["chexpert", "negbio"])
def test_cohort_is_images_with_both_findings_known(small_sample, labeler):
    manifest, report = build_mimic(small_sample, SourceOptions(labeler=labeler))
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
    manifest, _ = build_mimic(small_sample, SourceOptions())
    official = _raw(small_sample, "split").set_index("dicom_id")["split"]
    mapped = official.loc[manifest["image_id"]].replace({"validate": "val"})
    assert (manifest["split"].to_numpy() == mapped.to_numpy()).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1


def test_validation_rejects_a_subject_in_two_splits(small_sample):
    manifest, _ = build_mimic(small_sample, SourceOptions())
    subject = manifest.loc[manifest["split"] == "train", "subject_id"].iloc[0]
    leaked = pd.concat([manifest, manifest[manifest["subject_id"] == subject].assign(
        split="test", image_id=lambda d: d["image_id"] + "-copy")])
    with pytest.raises(ValueError, match="more than one split"):
        validate_manifest(leaked, origin="leak-test")


def test_cohort_table_counts_combinations_per_split(small_sample):
    manifest, _ = build_mimic(small_sample, SourceOptions())
    table = cohort_table(manifest)
    assert table.to_numpy().sum() == len(manifest)
    train = manifest[manifest["split"] == "train"]
    both = ((train["edema"] == 1) & (train["effusion"] == 1)).sum()
    assert table.loc["1,1", "train"] == both


def _download(tmp_path, small_sample, version="2.0.0", tables_version="2.0.0"):
    """A copy of the sample as a PhysioNet download: DICOM project and JPG project's tables."""
    files = tmp_path / "physionet.org" / "files"
    images = shutil.copytree(small_sample, files / "mimic-cxr" / version)
    shutil.copytree(sample_tables(small_sample), files / "mimic-cxr-jpg" / tables_version)
    return images, files / "mimic-cxr-jpg" / tables_version


@pytest.mark.parametrize("tables_version", ["2.0.0", "2.1.0"])
def test_tables_are_found_in_the_sibling_jpg_project(small_sample, tmp_path, tables_version):
    images, tables = _download(tmp_path, small_sample, tables_version=tables_version)
    assert not list(images.glob("*chexpert*"))  # the DICOM project has no tables
    layout = resolve_layout(images)
    assert (layout.images, layout.labels) == (images, tables)
    manifest, _ = build_mimic(images, SourceOptions())
    assert len(manifest) == len(build_mimic(small_sample, SourceOptions())[0]) > 0
    assert all((images / path).is_file() for path in manifest["path"])


def test_labels_root_and_single_directory_layouts(small_sample, tmp_path):
    images, tables = _download(tmp_path, small_sample)
    elsewhere = shutil.move(tables, tmp_path / "labels")
    with pytest.raises(MissingDataError):
        build_mimic(images, SourceOptions())
    explicit, _ = build_mimic(images, SourceOptions(labels_root=elsewhere))
    single = shutil.copytree(images, tmp_path / "single")
    for table in Path(elsewhere).iterdir():
        shutil.copy(table, single)
    single_directory, _ = build_mimic(single, SourceOptions())
    assert explicit["image_id"].tolist() == single_directory["image_id"].tolist()


def test_missing_files_are_named_with_their_roots_and_projects(small_sample, tmp_path):
    images, tables = _download(tmp_path, small_sample)
    (tables / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(MissingDataError) as raised:
        build_mimic(images, SourceOptions())
    message = str(raised.value)
    assert "mimic-cxr-2.0.0-split.csv.gz not found" in message
    assert "chexpert.csv.gz" not in message  # only what is missing
    assert str(images) in message and str(tables) in message  # where it looked
    assert "MIMIC-CXR-JPG (physionet.org/files/mimic-cxr-jpg/" in message
    assert "data.labels_root" in message and "MIMIC_CXR_JPG_ROOT" in message
    assert build_mimic(images, SourceOptions(split="random_patient"))[0]["split"].notna().all()
    with pytest.raises(MissingDataError, match=r"files is not a directory.*MIMIC_CXR_ROOT"):
        build_mimic(tmp_path / "nowhere", SourceOptions(labels_root=tables))


def test_image_paths_come_from_the_record_list(small_sample, tmp_path):
    images, _ = _download(tmp_path, small_sample)
    records = pd.read_csv(images / "cxr-record-list.csv.gz")
    assert list(records.columns) == ["subject_id", "study_id", "dicom_id", "path"]
    moved, dropped = records["dicom_id"].iloc[0], records["dicom_id"].iloc[1]
    target = Path("files", "elsewhere", f"{moved}.dcm")
    (images / target).parent.mkdir(parents=True)
    shutil.move(images / records["path"].iloc[0], images / target)
    records.loc[0, "path"] = target.as_posix()
    records.drop(index=1).to_csv(images / "cxr-record-list.csv.gz", index=False)
    manifest, report = build_mimic(images, SourceOptions(label_policy="mask"))
    paths = manifest.set_index("image_id")["path"]
    assert paths[moved] == target.as_posix() and dropped not in paths.index
    assert report.dropped["not_in_record_list"] == 1


def test_cohort_cli_reads_a_download_and_names_what_is_missing(small_sample, tmp_path):
    images, tables = _download(tmp_path, small_sample)
    run = [sys.executable, "-m", "cxr_lightning.data.cohort", "--root", str(images)]
    counts = json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
    _, report = build_mimic(small_sample, SourceOptions())
    assert counts["images_in_cohort"] == report.images_in_cohort
    shutil.rmtree(tables)
    failed = subprocess.run(run, capture_output=True, text=True)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "mimic-cxr-2.0.0-chexpert.csv.gz" in failed.stderr and "MIMIC-CXR-JPG" in failed.stderr


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
