"""Cohort options (labeler, label policy, views, split) checked against the raw CSVs with pandas."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from cxr_lightning.data import cohort
from cxr_lightning.data.cohort import main
from cxr_lightning.data.sources.mimic import build as build_mimic
from cxr_lightning.data.sources.options import SourceOptions
from cxr_lightning.findings import FINDINGS
from cxr_lightning.train import PROJECT_CONF_DIR
from tests.helpers.samples import sample_tables

COLUMN = {"edema": "Edema", "effusion": "Pleural Effusion"}
OTHER = {"edema": "effusion", "effusion": "edema"}
RELABELLED = {"zeros": (0.0, 0.0), "ones": (1.0, 0.0), "mask": (np.nan, np.nan)}
"""The documented rule: policy -> (value of an uncertain -1, value of a blank)."""


def _raw(root, name):
    return pd.read_csv(sample_tables(root) / f"mimic-cxr-2.0.0-{name}.csv.gz")


def _images(root, labeler="chexpert"):
    """Raw images with their study's labels and the official split, indexed by dicom_id."""
    images = _raw(root, "metadata").merge(_raw(root, labeler), on=["subject_id", "study_id"])
    split = _raw(root, "split").set_index("dicom_id")["split"].replace({"validate": "val"})
    return images.assign(split=images["dicom_id"].map(split)).set_index("dicom_id")


def _known(values):
    return values.isin([0, 1])


def _labels(manifest):
    return manifest.set_index("image_id")[list(FINDINGS)]


@pytest.mark.parametrize("policy", ["drop", "zeros", "ones", "mask"])
@pytest.mark.parametrize("finding", FINDINGS)
def test_each_label_policy_per_finding(small_sample, finding, policy):
    raw = _images(small_sample)[COLUMN[finding]]
    assert (raw == -1).sum() > 0 and raw.isna().sum() > 0  # the sample exercises both
    manifest, report = build_mimic(small_sample, SourceOptions(
        label_policy={finding: policy, OTHER[finding]: "mask"}))
    got = _labels(manifest)[finding]
    if policy == "drop":
        expected = raw[_known(raw)]
        dropped = ((raw == -1).sum(), raw.isna().sum())
    else:
        uncertain, blank = RELABELLED[policy]
        expected = raw.mask(raw == -1, uncertain).mask(raw.isna(), blank)
        dropped = (0, 0)
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index().astype(float),
                                   check_names=False, check_index_type=False)
    assert (report.dropped[f"{finding}_uncertain"], report.dropped[f"{finding}_blank"]) == dropped
    other = _labels(manifest)[OTHER[finding]]
    assert other.isna().sum() == (~_known(_images(small_sample)[COLUMN[OTHER[finding]]]
                                           .loc[other.index])).sum()


def test_default_drops_uncertain_and_blank_counting_each_image_under_its_first_rule(small_sample):
    raw = _images(small_sample)
    edema, effusion = raw["Edema"], raw["Pleural Effusion"]
    _, report = build_mimic(small_sample, SourceOptions())
    assert report.dropped == {
        "study_without_labels": 0,
        "view_not_selected": 0,
        "edema_uncertain": (edema == -1).sum(),
        "edema_blank": edema.isna().sum(),
        "effusion_uncertain": (_known(edema) & (effusion == -1)).sum(),
        "effusion_blank": (_known(edema) & effusion.isna()).sum(),
        "not_in_split_csv": 0,
        "not_in_record_list": 0,
    }
    assert report.images_in_cohort == (_known(edema) & _known(effusion)).sum()
    assert report.options == SourceOptions().to_dict()


def test_views_filter_keeps_frontal_images_with_their_studys_labels(small_sample):
    manifest, report = build_mimic(small_sample, SourceOptions(
        views=["PA", "AP"], label_policy={"edema": "mask", "effusion": "mask"}))
    raw = _images(small_sample)
    frontal = raw["ViewPosition"].isin(["PA", "AP"])
    assert sorted(manifest["image_id"]) == sorted(raw.index[frontal])
    assert report.dropped["view_not_selected"] == (~frontal).sum() > 0
    assert report.views == raw.loc[frontal, "ViewPosition"].value_counts().to_dict()
    study_labels = _raw(small_sample, "chexpert").set_index("study_id")[list(COLUMN.values())]
    expected = study_labels.loc[manifest["study_id"]].where(lambda d: _known(d)).to_numpy()
    np.testing.assert_array_equal(manifest[list(FINDINGS)].to_numpy(), expected)


def test_random_patient_split_is_seeded_patient_level_and_80_10_10(small_sample):
    everyone = {"edema": "mask", "effusion": "mask"}
    manifest, report = build_mimic(small_sample, SourceOptions(
        label_policy=everyone, split="random_patient", split_seed=3))
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1
    n_subjects = _raw(small_sample, "metadata")["subject_id"].nunique()
    assert report.patients == n_subjects == 40
    per_split = manifest.groupby("split")["subject_id"].nunique()
    assert per_split.to_dict() == {"train": 32, "val": 4, "test": 4}
    again, _ = build_mimic(small_sample, SourceOptions(
        label_policy=everyone, split="random_patient", split_seed=3))
    assert again["split"].equals(manifest["split"])
    other_seed, _ = build_mimic(small_sample, SourceOptions(
        label_policy=everyone, split="random_patient", split_seed=4))
    assert not other_seed["split"].equals(manifest["split"])
    official = _images(small_sample)["split"].loc[manifest["image_id"]]
    assert not (official.to_numpy() == manifest["split"].to_numpy()).all()
    # a patient's split does not depend on the label policy or views
    study, _ = build_mimic(small_sample,
                           SourceOptions(views=["PA"], split="random_patient", split_seed=3))
    split_of = manifest.groupby("subject_id")["split"].first()
    assert (study["split"].to_numpy() == split_of.loc[study["subject_id"]].to_numpy()).all()


def test_random_patient_split_needs_no_split_csv(small_sample, tmp_path):
    (tmp_path / "files").mkdir()  # the tables alone: no image is read here
    for name in ("chexpert", "metadata"):
        shutil.copy(sample_tables(small_sample) / f"mimic-cxr-2.0.0-{name}.csv.gz", tmp_path)
    manifest, _ = build_mimic(tmp_path, SourceOptions(split="random_patient"))
    assert len(manifest) == build_mimic(small_sample, SourceOptions())[1].images_in_cohort
    with pytest.raises(FileNotFoundError, match="split.csv.gz"):
        build_mimic(tmp_path, SourceOptions())


def test_images_missing_from_the_official_split_are_counted(small_sample, tmp_path):
    (tmp_path / "files").mkdir()  # the tables alone: no image is read here
    for name in ("chexpert", "metadata"):
        shutil.copy(sample_tables(small_sample) / f"mimic-cxr-2.0.0-{name}.csv.gz", tmp_path)
    split = _raw(small_sample, "split")
    split.iloc[10:].to_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    manifest, report = build_mimic(tmp_path, SourceOptions())
    full, _ = build_mimic(small_sample, SourceOptions())
    missing = full["image_id"].isin(split["dicom_id"].iloc[:10])
    assert report.dropped["not_in_split_csv"] == missing.sum() > 0
    assert sorted(manifest["image_id"]) == sorted(full.loc[~missing, "image_id"])


def test_negbio_and_chexpert_cohorts_follow_their_own_labels(small_sample):
    everyone = {"edema": "mask", "effusion": "mask"}
    by_labeler = {}
    for labeler in ("chexpert", "negbio"):
        manifest, report = build_mimic(small_sample,
                                       SourceOptions(labeler=labeler, label_policy=everyone))
        raw = _images(small_sample, labeler)[list(COLUMN.values())]
        expected = raw.where(_known(raw)).loc[manifest["image_id"]].to_numpy()
        np.testing.assert_array_equal(manifest[list(FINDINGS)].to_numpy(), expected)
        assert report.options["labeler"] == labeler
        by_labeler[labeler] = _labels(manifest)
    chexpert, negbio = by_labeler["chexpert"], by_labeler["negbio"]
    raw_differs = (_images(small_sample, "chexpert")["Edema"].fillna(9)
                   != _images(small_sample, "negbio")["Edema"].fillna(9))
    assert raw_differs.sum() > 0
    differs = chexpert["edema"].fillna(9) != negbio["edema"].loc[chexpert.index].fillna(9)
    assert set(differs.index[differs]) <= set(raw_differs.index[raw_differs])
    assert differs.sum() > 0


@pytest.mark.parametrize(("options", "message"), [
    ({"label_policy": {"edema": "maybe"}}, r"edema='maybe'.*'drop', 'zeros', 'ones', 'mask'"),
    ({"label_policy": {"atelectasis": "drop"}}, r"'atelectasis'.*\('edema', 'effusion'\)"),
    ({"labeler": "chexbert"}, r"'chexbert'.*\('chexpert', 'negbio'\)"),
    ({"split": "random"}, r"'random'.*\('official', 'random_patient'\)"),
    ({"views": "PA"}, "non-empty list"),
])
def test_invalid_options_name_the_valid_ones(small_sample, options, message):
    with pytest.raises(ValueError, match=message):
        build_mimic(small_sample, SourceOptions(**options))


def test_options_round_trip_through_their_dict():
    options = SourceOptions(labeler="negbio", label_policy={"effusion": "ones"}, views=["PA"],
                            split="random_patient", split_seed=2)
    as_dict = options.to_dict()
    assert as_dict == {"labeler": "negbio", "label_policy": {"edema": "drop", "effusion": "ones"},
                       "views": ["PA"], "split": "random_patient", "split_seed": 2}
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert SourceOptions(**as_dict) == options
    both = SourceOptions(label_policy="mask", views=["pa", "ap"])
    assert both.label_policy == {"edema": "mask", "effusion": "mask"}
    assert both.views == ("PA", "AP")


def test_cli_prints_the_cohort_counts_as_its_last_line(small_sample, tmp_path):
    out = tmp_path / "table.csv"
    result = subprocess.run(
        [sys.executable, "-m", "cxr_lightning.data.cohort", "--root", str(small_sample),
         "--views", "PA", "AP", "--policy", "edema=mask", "effusion=drop", "--out", str(out),
         "--split", "official"],
        capture_output=True, text=True, check=True, timeout=60)
    counts = json.loads(result.stdout.strip().splitlines()[-1])

    raw = _images(small_sample)
    raw = raw[raw["ViewPosition"].isin(["PA", "AP"]) & _known(raw["Pleural Effusion"])]
    edema = raw["Edema"].map(lambda v: str(int(v)) if v in (0, 1) else "masked")
    combination = edema + "," + raw["Pleural Effusion"].astype(int).astype(str)
    expected = pd.crosstab(combination, raw["split"])
    assert counts["table"] == {c: {s: int(expected.loc[c, s]) for s in ("train", "val", "test")}
                               for c in expected.index}
    assert counts["images_in_cohort"] == len(raw)
    assert counts["patients"] == raw["subject_id"].nunique()
    assert counts["views"] == raw["ViewPosition"].value_counts().to_dict()
    assert counts["dropped"]["effusion_blank"] == (
        _images(small_sample)["ViewPosition"].isin(["PA", "AP"])
        & _images(small_sample)["Pleural Effusion"].isna()).sum()
    assert counts["options"]["label_policy"] == {"edema": "mask", "effusion": "drop"}

    table = pd.read_csv(out, index_col=["section", "item"])
    assert table.loc["labels", "total"].sum() == len(raw)
    assert table.loc[("patients", "subjects"), "total"] == raw["subject_id"].nunique()
    assert table.loc["dropped", "total"].to_dict() == counts["dropped"]
    assert "Cohort of" in result.stderr


def _training_data(data: str):
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"data={data}", "data.root=/d"]).data


def test_cli_defaults_to_the_split_training_uses_and_names_it(small_sample, capsys):
    training = _training_data("mimic_cxr")
    main(["--root", str(small_sample)])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest, _ = build_mimic(small_sample, SourceOptions(split=training.split,
                                                          split_seed=training.split_seed))
    expected = pd.crosstab(manifest["edema"].astype(int).astype(str) + ","
                           + manifest["effusion"].astype(int).astype(str), manifest["split"])
    assert counts["table"] == {c: {s: int(expected.loc[c, s]) for s in ("train", "val", "test")}
                               for c in expected.index}
    assert (counts["split"], counts["split_seed"]) == ("random_patient", 0)


def test_the_cohort_default_split_of_each_source_is_trainings():
    splits = {path.stem: _training_data(path.stem).split
              for path in (PROJECT_CONF_DIR / "data").glob("*.yaml")}
    assert splits == cohort.TRAINING_SPLITS


def test_cli_rejects_an_unknown_policy_naming_the_valid_ones(small_sample, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(small_sample), "--policy", "edema=maybe"])
    assert exit_info.value.code == 2
    assert "'drop', 'zeros', 'ones', 'mask'" in capsys.readouterr().err
