"""CheXpert adapter on a small synthetic CheXpert-v1.0-small tree: policies, views, splits, root."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_lightning.data.manifest import MANIFEST_COLUMNS, validate_manifest
from cxr_lightning.data.sources.chexpert import build as build_chexpert
from cxr_lightning.data.sources.options import SourceOptions, apply_label_policy
from cxr_lightning.errors import UserError

FOLDER = "CheXpert-v1.0-small"
NAN = float("nan")
# (csv, patient, study, view file, Frontal/Lateral, AP/PA, Edema, Pleural Effusion)
ROWS = [
    ("train", 1, 1, "view1_frontal", "Frontal", "PA", 1.0, 0.0),
    ("train", 1, 1, "view2_lateral", "Lateral", "LL", 1.0, 0.0),
    ("train", 2, 1, "view1_frontal", "Frontal", "AP", -1.0, 1.0),
    ("train", 3, 1, "view1_frontal", "Frontal", "AP", NAN, 0.0),
    ("train", 4, 1, "view1_frontal", "Frontal", "PA", 0.0, -1.0),
    ("train", 5, 2, "view1_frontal", "Frontal", "AP", 0.0, NAN),
    *[("train", p, 1, "view1_frontal", "Frontal", "PA", 0.0, 0.0) for p in range(6, 26)],
    ("train", 26, 1, "view1_frontal", "Frontal", "PA", 0.0, 0.0),  # its JPEG is not written
    ("valid", 90, 1, "view1_frontal", "Frontal", "AP", 1.0, 1.0),
    ("valid", 90, 1, "view2_lateral", "Lateral", "RL", 1.0, 1.0),
    ("valid", 91, 1, "view1_frontal", "Frontal", "PA", 0.0, 1.0),
]
MISSING = "train/patient00026/study1/view1_frontal.jpg"


def image_id(row: tuple) -> str:
    return f"{row[0]}/patient{row[1]:05d}/study{row[2]}/{row[3]}.jpg"


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent folder of a CheXpert-v1.0-small tree (CSVs + 8x8 JPEGs)."""
    parent = tmp_path_factory.mktemp("chexpert")
    dataset = parent / FOLDER
    for csv in ("train", "valid"):
        records = []
        for row in (r for r in ROWS if r[0] == csv):
            records.append({"Path": f"{FOLDER}/{image_id(row)}", "Sex": "Female", "Age": 60,
                            "Frontal/Lateral": row[4], "AP/PA": row[5], "No Finding": NAN,
                            "Edema": row[6], "Pleural Effusion": row[7], "Pneumonia": NAN})
            if image_id(row) != MISSING:
                path = dataset / image_id(row)
                path.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(path), np.full((8, 8), 128, np.uint8))
        dataset.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(records).to_csv(dataset / f"{csv}.csv", index=False)
    return parent


def labels_of(manifest: pd.DataFrame, patient: int) -> list[float]:
    """(edema, effusion) of a train patient's frontal image (patient 5's is in study 2)."""
    study = 2 if patient == 5 else 1
    row = manifest.set_index("image_id").loc[
        f"train/patient{patient:05d}/study{study}/view1_frontal.jpg"]
    return [row["edema"], row["effusion"]]


def test_default_policy_drops_uncertain_or_blank(chexpert):
    manifest, report = build_chexpert(chexpert, SourceOptions())
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert report.images_in_source == len(ROWS) == 30
    assert report.dropped == {"view_not_selected": 0, "image_file_missing": 1,
                              "edema_uncertain": 1, "edema_blank": 1,
                              "effusion_uncertain": 1, "effusion_blank": 1}
    assert report.images_in_cohort == len(manifest) == 25
    assert not manifest["image_id"].str.contains("patient0000[2-5]").any()
    assert MISSING not in set(manifest["image_id"])
    assert manifest[["edema", "effusion"]].notna().all().all()
    assert (manifest["source"] == "chexpert").all()


@pytest.mark.parametrize(("policy", "expected"), [
    # patients 2 (edema -1), 3 (edema blank), 4 (effusion -1), 5 (effusion blank)
    ("zeros", {2: [0.0, 1.0], 3: [0.0, 0.0], 4: [0.0, 0.0], 5: [0.0, 0.0]}),
    ("ones", {2: [1.0, 1.0], 3: [0.0, 0.0], 4: [0.0, 1.0], 5: [0.0, 0.0]}),
    ("mask", {2: [NAN, 1.0], 3: [NAN, 0.0], 4: [0.0, NAN], 5: [0.0, NAN]}),
])
def test_policies_map_uncertain_and_blank(chexpert, policy, expected):
    manifest, report = build_chexpert(chexpert, SourceOptions(label_policy=policy))
    assert report.dropped["image_file_missing"] == 1
    assert sum(report.dropped.values()) == 1
    assert len(manifest) == 29
    for patient, labels in expected.items():
        np.testing.assert_array_equal(labels_of(manifest, patient), labels)
    assert labels_of(manifest, 1) == [1.0, 0.0]
    masked = manifest[["edema", "effusion"]].isna().sum().tolist()
    assert masked == ([2, 2] if policy == "mask" else [0, 0])


def test_policy_per_finding(chexpert):
    manifest, report = build_chexpert(
        chexpert, SourceOptions(label_policy={"edema": "mask", "effusion": "drop"}))
    assert report.dropped["effusion_uncertain"] == report.dropped["effusion_blank"] == 1
    assert report.dropped["edema_uncertain"] == report.dropped["edema_blank"] == 0
    assert report.options["label_policy"] == {"edema": "mask", "effusion": "drop"}
    assert len(manifest) == 27
    assert manifest["edema"].isna().sum() == 2 and manifest["effusion"].notna().all()
    with pytest.raises(ValueError, match="label_policy edema='ignore'"):
        build_chexpert(chexpert, SourceOptions(label_policy="ignore"))
    with pytest.raises(ValueError, match="unknown finding"):
        build_chexpert(chexpert, SourceOptions(label_policy={"pneumonia": "zeros"}))
    codes = pd.DataFrame({"edema": [1.0, 2.0], "effusion": [0.0, 0.0]})
    with pytest.raises(ValueError, match=r"edema labels must be 1, 0, -1 or blank, found \[2.0\]"):
        apply_label_policy(codes, {"edema": "zeros", "effusion": "zeros"}, {})


def test_views_ids_and_paths(chexpert):
    manifest, _ = build_chexpert(chexpert, SourceOptions(label_policy="zeros"))
    by_id = manifest.set_index("image_id")
    assert by_id.loc["train/patient00001/study1/view2_lateral.jpg", "view"] == "LATERAL"
    assert by_id.loc["valid/patient00090/study1/view2_lateral.jpg", "view"] == "LATERAL"
    assert by_id.loc["train/patient00002/study1/view1_frontal.jpg", "view"] == "AP"
    assert set(manifest["view"]) == {"PA", "AP", "LATERAL"}
    assert by_id.loc["train/patient00005/study2/view1_frontal.jpg", "subject_id"] == 5
    assert by_id.loc["train/patient00005/study2/view1_frontal.jpg", "study_id"] == 5002
    frontal, report = build_chexpert(chexpert,
                                     SourceOptions(label_policy="zeros", views=["pa", "AP"]))
    assert set(frontal["view"]) == {"PA", "AP"}
    assert report.dropped["view_not_selected"] == 2


def test_root_is_the_dataset_folder_or_its_parent(chexpert):
    from_parent, _ = build_chexpert(chexpert, SourceOptions())
    from_folder, _ = build_chexpert(chexpert / FOLDER, SourceOptions())
    assert from_parent["image_id"].equals(from_folder["image_id"])
    assert from_parent["split"].equals(from_folder["split"])
    assert (from_parent["path"] == FOLDER + "/" + from_folder["path"]).all()
    assert all((chexpert / p).is_file() for p in from_parent["path"])
    assert all((chexpert / FOLDER / p).is_file() for p in from_folder["path"])


def test_official_split_valid_is_test_and_val_is_patient_level(chexpert):
    manifest, _ = build_chexpert(chexpert, SourceOptions(label_policy="zeros", split_seed=2))
    test_subjects = set(manifest.loc[manifest["split"] == "test", "subject_id"])
    assert test_subjects == {90, 91}
    val_subjects = set(manifest.loc[manifest["split"] == "val", "subject_id"])
    assert val_subjects and val_subjects <= set(range(1, 27))
    # drawn over all of train.csv's patients: a patient's split is the same whatever the cohort
    cohort, _ = build_chexpert(chexpert, SourceOptions(split_seed=2, views=["PA"]))
    split = manifest.set_index("image_id")["split"]
    assert (split.loc[cohort["image_id"]].to_numpy() == cohort["split"].to_numpy()).all()
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1
    again, _ = build_chexpert(chexpert, SourceOptions(label_policy="zeros", split_seed=2))
    assert manifest["split"].equals(again["split"])


def test_random_patient_split_pools_both_csvs(chexpert):
    manifest, _ = build_chexpert(chexpert, SourceOptions(split="random_patient", split_seed=4))
    validate_manifest(manifest, origin="chexpert-test")
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1


def test_missing_or_ambiguous_dataset_folder(tmp_path, chexpert):
    with pytest.raises(FileNotFoundError, match=r"train\.csv.*data\.root"):
        build_chexpert(tmp_path, SourceOptions())
    for name in ("CheXpert-v1.0", "CheXpert-v1.0-small"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.csv").write_text("Path\n")
    with pytest.raises(ValueError, match="several CheXpert folders"):
        build_chexpert(tmp_path, SourceOptions())


@pytest.mark.parametrize(("options", "message"), [
    ({"labeler": "negbio"}, "data.labeler=negbio applies to MIMIC-CXR only"),
    ({"labels_root": "tables"}, "data.labels_root applies to MIMIC-CXR only"),
])
def test_mimic_only_options_are_refused(chexpert, options, message):
    with pytest.raises(UserError, match=message):
        build_chexpert(chexpert, SourceOptions(**options))
