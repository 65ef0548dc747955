"""The report CLI on a tiny real sweep (the three formulations through the training CLI): its
tables match the jobs' results.json and its figures' numbers match scikit-learn on the saved
predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from cxr_lightning.findings import FINDINGS
from tests.helpers.report_fixtures import PROJECT_ROOT, tiny_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The tiny sweep, its results.json files by job, and the report CLI's output directory."""
    sweep = tiny_sweep(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("report")
    done = subprocess.run([sys.executable, "-m", "cxr_lightning.report", str(sweep), "--out",
                           str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    return {"sweep": sweep, "out": out, "results": results, "log": done.stderr}


def test_table3_matches_results_json(reported):
    table3 = pd.read_csv(reported["out"] / "table3.csv").set_index("formulation")
    assert sorted(table3.index) == ["binary", "multiclass", "multilabel"]
    text = (reported["out"] / "report.md").read_text()
    discordant = pd.read_csv(reported["out"] / "table3_discordant.csv").set_index("formulation")
    for result in reported["results"].values():
        metrics = result["metrics"]
        row = table3.loc[result["formulation"]]
        assert row["runs"] == 1
        for key in (f"test/{m}/{f}" for m in ("acc", "auroc") for f in FINDINGS):
            assert row[key] == pytest.approx(metrics[key])
            cell = f"{metrics[key]:.3f}"
            if f"{key}_ci_low" in metrics:  # the job's 95% CI beside it
                cell += f" [{metrics[key + '_ci_low']:.3f}, {metrics[key + '_ci_high']:.3f}]"
            assert cell in text
            subset_key = key.replace("test/", "test_discordant/")
            if metrics.get(subset_key) is not None:
                assert discordant.loc[result["formulation"], subset_key] == pytest.approx(
                    metrics[subset_key])
    assert "Wrote the report of 3 jobs" in reported["log"]
    stages = [s for r in reported["results"].values() for m in r["members"]
              for s in m.get("stages", [])]
    if stages:  # per-stage records: one Table 1 row per job, model and stage
        assert len(pd.read_csv(reported["out"] / "table1_stages.csv")) == len(stages)
    else:
        assert "Table 1 is unavailable for this sweep" in text


def test_figures_numbers_match_sklearn_on_the_predictions(reported):
    out = reported["out"]
    confusion = pd.read_csv(out / "figure4_confusion.csv")
    for job, result in reported["results"].items():
        predictions = pd.DataFrame(result["predictions"])
        for number, finding in zip((6, 7), FINDINGS, strict=True):
            known = predictions.dropna(subset=[finding])
            y, p = known[finding].astype(int), known[f"{finding}_prob"]
            row = confusion[(confusion["setting"] == result["formulation"])
                            & (confusion["finding"] == finding)]
            assert row[["tn", "fp", "fn", "tp"]].to_numpy().ravel().tolist() == \
                confusion_matrix(y, p > 0.5, labels=[0, 1]).ravel().tolist() == \
                np.ravel(result["metrics"][f"test/confusion/{finding}"]).tolist()
            curves = pd.read_csv(out / f"figure{number}_roc_{finding}.csv")
            curve = curves[curves["job"] == job]
            fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
            np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
            np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)
            assert curve["auc"].iloc[0] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    accuracy = pd.read_csv(out / "figure5_accuracy.csv")
    epochs = pd.read_csv(out / "figure8_epochs_time.csv").set_index("job")
    for job, result in reported["results"].items():
        predictions = pd.DataFrame(result["predictions"])
        for finding in FINDINGS:
            known = predictions.dropna(subset=[finding])
            bar = accuracy[(accuracy["setting"] == result["formulation"])
                           & (accuracy["finding"] == finding)]
            assert bar["accuracy"].item() == pytest.approx(
                ((known[f"{finding}_prob"] > 0.5) == (known[finding] == 1)).mean())
        times = [t for m in result["members"] for t in m["epoch_times_s"]]
        assert epochs.loc[job, "epochs"] == sum(m["epochs"] for m in result["members"])
        assert epochs.loc[job, "epoch_time_s"] == pytest.approx(np.mean(times))
    for name in ("figure4_confusion", "figure5_accuracy", "figure6_roc_edema",
                 "figure7_roc_effusion", "figure8_epochs_time"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_comparison_agrees_with_each_jobs_metrics(reported):
    comparisons = pd.read_csv(reported["out"] / "comparisons.csv")
    by_formulation = {r["formulation"]: r["metrics"] for r in reported["results"].values()}
    overall = comparisons[comparisons["subset"] == "all"]
    assert len(overall) == len(FINDINGS) * 3  # three pairs of formulations per finding
    for row in overall.itertuples():
        for run, auroc, accuracy in ((row.run_a, row.auroc_a, row.acc_a),
                                     (row.run_b, row.auroc_b, row.acc_b)):
            assert accuracy == pytest.approx(by_formulation[run][f"test/acc/{row.finding}"])
            if min(row.n_pos, row.n - row.n_pos) >= 2:  # else no DeLong comparison
                assert auroc == pytest.approx(by_formulation[run][f"test/auroc/{row.finding}"],
                                              abs=1e-6)
