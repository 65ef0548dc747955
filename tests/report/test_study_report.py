"""The study directory's report (REPORT.md) on hand-built parts: Table 2 beside the study's
counts, the baseline's stopping epoch, Table 1's schedule as rerun, Table 3 with the study's
published rows, Figure 5 a scatter, and the departures from the study. The study's figures are
written out here as the issue quotes them (an independent copy of cxr_lightning.published)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from cxr_lightning.findings import FINDINGS
from cxr_lightning.report import figures
from cxr_lightning.report.__main__ import main as report_main
from cxr_lightning.report.study import compile_study, published_accuracy
from cxr_lightning.report.study_tables import table2
from tests.helpers.report_fixtures import random_predictions, reference_metrics, write_job

STUDY_TABLE2 = {"0,0": 11548, "0,1": 5709, "1,0": 2310, "1,1": 14136}
STUDY_ACCURACY = {"binary": (0.797, 0.818), "multilabel": (0.783, 0.802),
                  "multiclass": (0.795, 0.826)}
STUDY_MULTICLASS_AUROC = (0.88, 0.90)


def _manifest() -> pd.DataFrame:
    """7 images: (edema, effusion) 0,0 x3 (train 2, test 1), 1,1 x2 (val), 0,1 x1, 1,masked x1."""
    rows = [(0, 0, "train"), (0, 0, "train"), (0, 0, "test"), (1, 1, "val"), (1, 1, "val"),
            (0, 1, "train"), (1, np.nan, "test")]
    return pd.DataFrame([{"edema": e, "effusion": f, "split": s} for e, f, s in rows])


def test_table2_counts_ours_beside_the_study(tmp_path):
    table = table2(_manifest()).set_index("(edema,effusion)")
    assert table.loc["0,0", ["train", "val", "test", "total"]].tolist() == [2, 0, 1, 3]
    assert table.loc["1,masked", "total"] == 1 and table.loc["1,masked", "study"] == 0
    assert table.loc["1,0", "total"] == 0  # in the study's table, absent from ours
    for combination, count in STUDY_TABLE2.items():
        assert table.loc[combination, "study"] == count
    assert table.loc["total", ["total", "study"]].tolist() == [7, 33703]
    assert table.loc["0,0", "share"] == pytest.approx(round(3 / 7, 3))
    assert table.loc["1,1", "study_share"] == pytest.approx(round(14136 / 33703, 3))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    study = tmp_path_factory.mktemp("study")
    (study / "study.json").write_text(json.dumps({
        "preset": "sample", "seeds": 1, "overrides": [],
        "parts": {p: {"status": "done"} for p in ("cohort", "baseline", "table1",
                                                   "formulations")}}))
    (study / "1_cohort").mkdir()
    table2(_manifest()).to_csv(study / "1_cohort" / "table2.csv", index=False)
    baseline = write_job(study / "3_baseline", 0, "binary", random_predictions(1),
                         epoch_times_s=(1.0,) * 7, stages=True)
    write_job(study / "4_table1", 0, "multiclass", random_predictions(2), stages=True)
    for num, formulation in enumerate(STUDY_ACCURACY):
        write_job(study / "5_formulations", num, formulation, random_predictions(10 + num),
                  overrides={"seed": "1"})
    sample_config = {"data": {"source": "sample", "image_size": 64, "resize": "pad",
                              "split": "random_patient", "batch_size": 32},
                     "model": {"backbone": "resnet18", "weights": "none", "lr": 0.001}}
    for path in (study / "5_formulations").glob("*/results.json"):
        results = json.loads(path.read_text())
        results["config"] |= sample_config
        path.write_text(json.dumps(results))
    table1_job = next((study / "4_table1").glob("*/results.json"))
    results = json.loads(table1_job.read_text())
    results["config"] |= {"unfreeze": {"schedule": [[7, 1], [10, 2], [14, 3]]},
                          "trainer": {"max_epochs": 16}}
    table1_job.write_text(json.dumps(results))
    return study, baseline


@pytest.fixture(scope="module")
def report_text(study_dir) -> str:
    """REPORT.md as ``cxr-report STUDY_DIR`` writes it."""
    study, _ = study_dir
    path = report_main([str(study), "--n-bootstrap", "50"])
    assert path == study / "REPORT.md"
    return path.read_text()


@pytest.fixture(scope="module")
def compiled(study_dir):
    return compile_study(study_dir[0], n_bootstrap=50)


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def test_report_sets_ours_beside_the_studys_figures(study_dir, report_text):
    study, text = study_dir[0], report_text
    table3 = _section(text, "Table 3 beside the study's")
    for formulation, (edema, effusion) in STUDY_ACCURACY.items():
        row = next(line for line in table3.splitlines()
                   if line.startswith(f"| {formulation} (study, published)"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:4] == [f"{edema:.3f}", f"{effusion:.3f}"]
        expected_auroc = ([f"{v:.3f}" for v in STUDY_MULTICLASS_AUROC]
                          if formulation == "multiclass" else ["–", "–"])
        assert cells[4:6] == expected_auroc
        ours = reference_metrics(random_predictions(10 + list(STUDY_ACCURACY).index(
            formulation)))
        our_row = next(line for line in table3.splitlines() if line.startswith(
            f"| {formulation} "))
        assert f"{ours['test/acc/edema']:.3f}" in our_row
    table2_text = _section(text, "Table 2: the cohort beside the study's")
    assert "11548" in table2_text and "33703" in table2_text
    assert "not the study's Table 1" in text and "MAE" in text
    for figure in ("figure4_confusion", "figure5_accuracy", "figure6_roc_edema",
                   "figure7_roc_effusion", "figure8_epochs_time"):
        assert (study / "report" / f"{figure}.png").is_file()
        assert f"(report/{figure}.png)" in text
    assert "DeLong" in _section(text, "Paired tests between formulations")


def test_the_baseline_stopping_epoch_is_its_members(study_dir, compiled):
    baseline, report = study_dir[1], compiled
    members = json.loads((baseline / "results.json").read_text())["members"]
    assert report.baseline["model"].tolist() == ["binary-edema", "binary-effusion"]
    assert report.baseline["epochs"].tolist() == [7, 7]
    assert report.baseline["best_epoch"].tolist() == [
        m["stages"][-1]["best_epoch"] for m in members]


def test_departures_are_listed_from_the_configuration(report_text):
    differs = _section(report_text, "How this run differs from the study")
    assert "`model.backbone` is `resnet18`; the study's is `resnet152`" in differs
    assert "`data.image_size` is `64`; the study's is `512`" in differs
    assert "embedded MIMIC-CXR-format sample" in differs
    assert "where the study is silent" in differs and "`pad`" in differs
    assert "[[7, 1], [10, 2], [14, 3]]" in differs and "over 16 epochs" in differs


def test_figure5_is_a_scatter_with_the_studys_points(compiled):
    report = compiled
    points = published_accuracy(report.formulations.table3)
    figure = figures.accuracy_figure(report.formulations.accuracy, points)
    (axis,) = figure.axes
    assert not [p for p in axis.patches if isinstance(p, Rectangle)]  # no bars
    scatters = [c for c in axis.collections if isinstance(c, PathCollection)]
    ours = scatters[0::2]
    assert len(ours) == 3 and len(scatters) == 6  # each setting: ours, then the study's star
    for collection, formulation in zip(scatters[1::2], STUDY_ACCURACY, strict=True):
        assert collection.get_offsets()[:, 1].tolist() == pytest.approx(
            list(STUDY_ACCURACY[formulation]))
    assert list(FINDINGS) == [t.get_text() for t in axis.get_xticklabels()]
