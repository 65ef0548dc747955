"""``cxr-cohort --download-list``: the paths a ``wget -i`` (or a cloud bucket copy) fetches are
exactly the cohort's images, and each resolves to a file inside the DICOM project."""

from pathlib import Path

import pandas as pd

from cxr_lightning.data.cohort import main as cohort_main
from tests.helpers.samples import sample_tables


def cohort_paths_by_hand(project: Path) -> set[str]:
    """The study's cohort read straight from the generated download's tables with pandas: the
    studies labelled 0 or 1 for both Edema and Pleural Effusion by CheXpert, their images in
    the metadata, their paths in the record list (the official split lists every image)."""
    tables = sample_tables(project)
    labels = pd.read_csv(tables / "mimic-cxr-2.0.0-chexpert.csv.gz")
    known = labels[labels["Edema"].isin([0, 1]) & labels["Pleural Effusion"].isin([0, 1])]
    metadata = pd.read_csv(tables / "mimic-cxr-2.0.0-metadata.csv.gz")
    images = metadata.merge(known[["subject_id", "study_id"]], on=["subject_id", "study_id"])
    split = pd.read_csv(tables / "mimic-cxr-2.0.0-split.csv.gz")
    images = images[images["dicom_id"].isin(split["dicom_id"])]
    records = pd.read_csv(project / "cxr-record-list.csv.gz")
    return set(records[records["dicom_id"].isin(images["dicom_id"])]["path"])


def test_the_download_list_is_the_cohort_and_resolves_inside_the_project(small_sample,
                                                                          tmp_path):
    listed = tmp_path / "files.txt"
    cohort_main(["--root", str(small_sample), "--download-list", str(listed)])
    lines = listed.read_text().splitlines()
    expected = cohort_paths_by_hand(small_sample)
    assert len(lines) == len(set(lines)) == len(expected) > 0
    assert set(lines) == expected
    everything = {str(p.relative_to(small_sample)) for p in small_sample.rglob("*.dcm")}
    assert expected < everything  # the cohort is a strict subset of the download
    project = small_sample.resolve()
    for line in lines:
        assert not line.startswith("/") and ".." not in Path(line).parts
        target = (project / line).resolve()
        assert target.is_relative_to(project / "files") and target.is_file()
