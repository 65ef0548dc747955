"""NIH ChestX-ray14 adapter: the real 64 px sample against its CSV, and synthetic layouts."""

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from cxr_lightning.data.cohort import main as cohort_main
from cxr_lightning.data.manifest import MANIFEST_COLUMNS, validate_manifest
from cxr_lightning.data.sources.nih import build as build_nih
from cxr_lightning.data.sources.options import SourceOptions
from cxr_lightning.errors import UserError

NIH_SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nih_chestxray14_64px"
CSV_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position"]


@pytest.fixture
def nih_sample() -> Path:
    if not (NIH_SAMPLE / "Data_Entry_2017_v2020.csv").is_file():
        pytest.skip(f"{NIH_SAMPLE} is absent (shared test data)")
    return NIH_SAMPLE


@pytest.mark.realdata
def test_real_sample_every_row_parsed_and_labels_match_the_csv(nih_sample):
    manifest, report = build_nih(nih_sample, SourceOptions())
    raw = pd.read_csv(nih_sample / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    assert len(raw) == 483 and report.images_in_source == 483
    assert report.images_in_cohort == len(manifest) == 483
    assert sum(report.dropped.values()) == 0
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert sorted(manifest["image_id"]) == sorted(raw.index)

    rows = raw.loc[manifest["image_id"]]
    expected_edema = rows["Finding Labels"].str.contains("Edema").astype(float).to_numpy()
    expected_effusion = rows["Finding Labels"].str.contains("Effusion").astype(float).to_numpy()
    assert (manifest["edema"].to_numpy() == expected_edema).all()
    assert (manifest["effusion"].to_numpy() == expected_effusion).all()
    combinations = manifest.groupby(["edema", "effusion"]).size().to_dict()
    assert combinations == {(0.0, 0.0): 387, (0.0, 1.0): 87, (1.0, 1.0): 7, (1.0, 0.0): 2}

    assert (manifest["subject_id"].to_numpy() == rows["Patient ID"].to_numpy()).all()
    assert manifest["subject_id"].nunique() == 133
    assert manifest["study_id"].is_unique
    assert set(manifest["view"]) == {"PA", "AP"}
    assert (manifest["view"].to_numpy() == rows["View Position"].to_numpy()).all()
    assert all((nih_sample / path).is_file() for path in manifest["path"])
    assert (manifest["source"] == "nih").all()


@pytest.mark.realdata
def test_real_sample_split_is_patient_level_and_seeded(nih_sample):
    manifest, _ = build_nih(nih_sample, SourceOptions(split_seed=3))
    validate_manifest(manifest, origin="nih-test")
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1
    again, _ = build_nih(nih_sample, SourceOptions(split="random_patient", split_seed=3))
    assert manifest["split"].equals(again["split"])
    only_pa, report = build_nih(nih_sample, SourceOptions(views=["PA"]))
    assert set(only_pa["view"]) == {"PA"}
    assert report.dropped["view_not_selected"] == (manifest["view"] == "AP").sum()


def _synthetic_nih(root: Path, missing: set[str], patients: range) -> pd.DataFrame:
    """An NIH-layout tree: two images per patient in images_00N/images/, files in ``missing``
    not written."""
    findings = ["Edema|Effusion", "No Finding", "Effusion|Infiltration", "Pleural_Thickening",
                "Edema"]
    rows = []
    for patient in patients:
        for follow_up in range(2):
            name = f"{patient:08d}_{follow_up:03d}.png"
            rows.append([name, findings[(patient + follow_up) % len(findings)], follow_up,
                         patient, 50, "M", "PA" if follow_up == 0 else "AP"])
            if name not in missing:
                folder = root / f"images_{1 + patient % 2:03d}" / "images"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(b"")
    table = pd.DataFrame(rows, columns=CSV_COLUMNS)
    table.to_csv(root / "Data_Entry_2017.csv", index=False)
    return table


def test_missing_image_file_is_dropped_and_counted(tmp_path, caplog):
    table = _synthetic_nih(tmp_path, missing={"00000005_001.png"}, patients=range(1, 21))
    with caplog.at_level(logging.INFO, logger="cxr_lightning.data.sources.nih"):
        manifest, report = build_nih(tmp_path, SourceOptions())
    assert "random patient-level split" in caplog.text
    assert report.images_in_source == len(table) == 40
    assert report.dropped == {"view_not_selected": 0, "image_file_missing": 1,
                              "not_in_split_lists": 0}
    assert report.images_in_cohort == len(manifest) == 39
    assert "00000005_001.png" not in set(manifest["image_id"])
    assert all((tmp_path / path).is_file() for path in manifest["path"])
    assert set(manifest["path"].str.split("/").str[0]) == {"images_001", "images_002"}
    labels = manifest.set_index("image_id")
    assert labels.loc["00000005_000.png", ["edema", "effusion"]].tolist() == [1.0, 1.0]
    assert labels.loc["00000004_000.png", ["edema", "effusion"]].tolist() == [1.0, 0.0]
    assert labels.loc["00000002_000.png", ["edema", "effusion"]].tolist() == [0.0, 1.0]
    assert labels.loc["00000003_000.png", ["edema", "effusion"]].tolist() == [0.0, 0.0]
    assert labels.loc["00000004_001.png", "study_id"] == 4001


def test_official_split_uses_the_lists_with_a_patient_level_val(tmp_path):
    _synthetic_nih(tmp_path, missing=set(), patients=range(1, 21))
    train_val = [f"{p:08d}_{f:03d}.png" for p in range(1, 17) for f in range(2)]
    test = [f"{p:08d}_{f:03d}.png" for p in range(17, 20) for f in range(2)]
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    manifest, report = build_nih(tmp_path, SourceOptions(split_seed=1))
    assert report.dropped["not_in_split_lists"] == 2  # patient 20 is in neither list
    split = manifest.set_index("image_id")["split"]
    assert sorted(split[split == "test"].index) == sorted(test)
    val_patients = manifest.loc[manifest["split"] == "val", "subject_id"].unique()
    assert len(val_patients) == 2  # 1/8 of the 16 train_val patients
    assert set(val_patients) <= set(range(1, 17))
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1
    again, _ = build_nih(tmp_path, SourceOptions(split_seed=1))
    assert manifest["split"].equals(again["split"])


def test_missing_csv_names_the_file_and_what_root_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Data_Entry_2017\*\.csv.*data\.root.*images"):
        build_nih(tmp_path, SourceOptions())


def test_unknown_split_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.split"):
        build_nih(tmp_path, SourceOptions(split="official_v2"))


@pytest.mark.parametrize(("options", "message"), [
    ({"label_policy": "mask"}, "data.label_policy does not apply to NIH"),
    ({"labeler": "negbio"}, "data.labeler=negbio applies to MIMIC-CXR only"),
    ({"labels_root": "tables"}, "data.labels_root applies to MIMIC-CXR only"),
])
def test_options_nih_cannot_honour_are_refused(tmp_path, options, message):
    _synthetic_nih(tmp_path, missing=set(), patients=range(1, 5))
    with pytest.raises(UserError, match=message):
        build_nih(tmp_path, SourceOptions(**options))
    assert len(build_nih(tmp_path, SourceOptions(label_policy="drop"))[0]) == 8  # a no-op


def test_cohort_cli_reads_nih_through_the_registry(tmp_path, capsys):
    table = _synthetic_nih(tmp_path, missing={"00000003_000.png"}, patients=range(1, 21))
    cohort_main(["--root", str(tmp_path), "--source", "nih", "--split", "random_patient"])
    counts = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert counts["images_in_source"] == len(table) == 40
    assert counts["images_in_cohort"] == 39 and counts["dropped"]["image_file_missing"] == 1
    # (edema, effusion) per Finding Labels, counted by hand from _synthetic_nih's cycle
    tokens = table.loc[table["Image Index"] != "00000003_000.png", "Finding Labels"].str.split("|")
    edema, effusion = tokens.map(lambda t: "Edema" in t), tokens.map(lambda t: "Effusion" in t)
    assert sum(counts["table"]["1,1"].values()) == int((edema & effusion).sum())
    assert sum(counts["table"]["0,0"].values()) == int((~edema & ~effusion).sum())
