"""The sweep report on hand-built results.json fixtures (see tests/report_fixtures.py), checked
against scikit-learn and numpy recomputations of the same numbers."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from cxr_lightning.findings import FINDINGS
from cxr_lightning.report import compile_report, newest_sweep, write_report
from cxr_lightning.report.__main__ import main as report_main
from cxr_lightning.report.load import describe_jobs, distinguishing_keys, load_sweep
from tests.helpers.report_fixtures import (
    discordant,
    random_predictions,
    reference_metrics,
    write_job,
)

N_BOOTSTRAP = 200
SETTINGS = ("binary", "multilabel", "multiclass")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Experiment II shape: three formulations x two seeds (6 jobs, each its own probabilities
    on one test split, discordant-subset metrics included), compiled and written once."""
    sweep = tmp_path_factory.mktemp("seeded") / "sweep"
    predictions = {}
    for num, (formulation, seed) in enumerate((f, s) for f in SETTINGS for s in (1, 2)):
        predictions[num] = random_predictions(seed=10 * num + seed)
        write_job(sweep, num, formulation, predictions[num], overrides={"seed": str(seed)},
                  epoch_times_s=[1.0 + num, 2.0 + num], subsets=True)
    report = compile_report(sweep, n_bootstrap=N_BOOTSTRAP)
    out = sweep.parent / "out"
    text = write_report(report, out).read_text()
    return {"sweep": sweep, "predictions": predictions, "report": report, "out": out,
            "text": text}


def _markdown_section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def _write(sweep, out_dir):
    """Compile (few bootstrap resamples) and write a report; its report.md text."""
    return write_report(compile_report(sweep, n_bootstrap=N_BOOTSTRAP), out_dir).read_text()


def test_table3_averages_seeds_of_a_formulation(seeded):
    report, predictions = seeded["report"], seeded["predictions"]
    table3 = report.table3.set_index("setting")
    assert list(table3.index) == list(SETTINGS)
    assert report.varying == ["formulation", "seed"]
    for k, formulation in enumerate(SETTINGS):
        runs = [reference_metrics(predictions[2 * k + s]) for s in (0, 1)]
        for key in (f"test/{m}/{f}" for m in ("acc", "auroc") for f in FINDINGS):
            values = [r[key] for r in runs]
            assert table3.loc[formulation, key] == pytest.approx(np.mean(values))
            assert table3.loc[formulation, f"{key}_sd"] == pytest.approx(np.std(values, ddof=1))
        assert table3.loc[formulation, "runs"] == 2
    jobs = report.jobs.set_index("job")
    assert len(jobs) == 6 and jobs.loc["3_multilabel", "seed"] == "2"
    assert jobs.loc["3_multilabel", "test/acc/edema"] == pytest.approx(
        reference_metrics(predictions[3])["test/acc/edema"])


def test_report_markdown_shows_mean_and_sd(seeded):
    text, predictions = seeded["text"], seeded["predictions"]
    values = [reference_metrics(predictions[n])["test/acc/effusion"] for n in (2, 3)]
    row = next(line for line in _markdown_section(text, "Table 3: ").splitlines()
               if line.startswith("| multilabel"))
    assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in row
    assert "Table 1 is unavailable for this sweep" in text  # no stages: recorded, not an error
    assert "match those recomputed from its predictions (6 jobs)" in text


def test_discordant_table_from_the_subset_metrics(seeded):
    predictions = seeded["predictions"]
    table = pd.read_csv(seeded["out"] / "table3_discordant.csv").set_index("setting")
    for k, formulation in enumerate(SETTINGS):
        values = [reference_metrics(discordant(predictions[2 * k + s]))["test/auroc/edema"]
                  for s in (0, 1)]
        assert table.loc[formulation, "test_discordant/auroc/edema"] == pytest.approx(
            np.mean(values))
    section = _markdown_section(seeded["text"], "Table 3 on the discordant")
    assert "test_discordant edema AUROC" in section and "Unavailable" not in section


def _holm(p_values: list[float]) -> np.ndarray:
    """Holm's step-down adjustment, by hand."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def test_settings_are_compared_pairwise_within_each_seed(seeded):
    predictions = seeded["predictions"]
    table = pd.read_csv(seeded["out"] / "comparisons.csv")
    assert len(table) == 2 * 2 * 2 * 3  # seeds x findings x subsets x pairs
    for row in table.itertuples():
        runs = {s: predictions[2 * SETTINGS.index(s) + row.seed - 1] for s in SETTINGS}
        a, b = runs[row.run_a], runs[row.run_b]
        if row.subset == "discordant":
            a, b = discordant(a), discordant(b)
        known = a[row.finding].notna()
        y = a.loc[known, row.finding].astype(int)
        p_a, p_b = (t.loc[known, f"{row.finding}_prob"] for t in (a, b))
        correct_a, correct_b = (p_a > 0.5) == (y == 1), (p_b > 0.5) == (y == 1)
        assert row.n == known.sum()
        assert row.acc_delta == pytest.approx(correct_a.mean() - correct_b.mean())
        a_only, b_only = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
        assert (row.mcnemar_a_only, row.mcnemar_b_only) == (a_only, b_only)
        assert row.mcnemar_p == pytest.approx(
            binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0)
        if min(y.sum(), (1 - y).sum()) >= 2:
            assert row.auroc_a == pytest.approx(roc_auc_score(y, p_a))
            assert row.auroc_delta == pytest.approx(roc_auc_score(y, p_a) - roc_auc_score(y, p_b))
    for _, family in table.groupby(["seed", "finding", "subset"]):
        assert family["mcnemar_p_holm"].to_numpy() == pytest.approx(
            _holm(family["mcnemar_p"].tolist()))
    section = _markdown_section(seeded["text"], "Formulation comparison")
    first = table.iloc[0]
    assert f"{first.auroc_delta:+.3f}" in section and "DeLong p (Holm)" in section


def test_confusion_figure_numbers_pool_runs_as_sklearn_counts(seeded):
    predictions, out = seeded["predictions"], seeded["out"]
    figure4 = pd.read_csv(out / "figure4_confusion.csv")
    assert (out / "figure4_confusion.png").stat().st_size > 10_000
    for k, formulation in enumerate(SETTINGS):
        for finding in FINDINGS:
            pooled = pd.concat([predictions[2 * k], predictions[2 * k + 1]])
            known = pooled.dropna(subset=[finding])
            expected = confusion_matrix(known[finding].astype(int),
                                        known[f"{finding}_prob"] > 0.5, labels=[0, 1])
            row = figure4[(figure4["setting"] == formulation) & (figure4["finding"] == finding)]
            assert row[["tn", "fp", "fn", "tp"]].to_numpy().ravel().tolist() == \
                expected.ravel().tolist()
            assert row["runs"].item() == 2


def test_roc_figure_numbers_match_sklearn(seeded):
    predictions, out = seeded["predictions"], seeded["out"]
    for number, finding in zip((6, 7), FINDINGS, strict=True):
        curves = pd.read_csv(out / f"figure{number}_roc_{finding}.csv")
        bands = pd.read_csv(out / f"figure{number}_roc_{finding}_band.csv")
        assert curves["job"].nunique() == bands["job"].nunique() == 6
        for num, table in predictions.items():
            known = table.dropna(subset=[finding])
            fpr, tpr, _ = roc_curve(known[finding], known[f"{finding}_prob"],
                                    drop_intermediate=False)
            curve = curves[curves["job"].str.startswith(f"{num}_")]
            np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
            np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)
            assert curve["auc"].unique() == pytest.approx(
                roc_auc_score(known[finding], known[f"{finding}_prob"]))
            band = bands[bands["job"].str.startswith(f"{num}_")]
            assert band["fpr"].tolist() == pytest.approx(np.linspace(0, 1, 101).tolist())
            assert ((band["tpr_low"] >= 0) & (band["tpr_low"] <= band["tpr_high"])
                    & (band["tpr_high"] <= 1)).all()
            between = ~np.isclose(band["fpr"].to_numpy()[:, None], fpr[None, :]).any(axis=1)
            np.testing.assert_allclose(band["tpr"][between],
                                       np.interp(band["fpr"][between], fpr, tpr), atol=1e-9)


def test_reliability_numbers_match_numpy_bins(seeded):
    predictions = seeded["predictions"]
    points = pd.read_csv(seeded["out"] / "reliability.csv")
    for num, table in predictions.items():
        for finding in FINDINGS:
            known = table.dropna(subset=[finding])
            bins = np.digitize(known[f"{finding}_prob"], np.linspace(0, 1, 16)) - 1
            expected = known.groupby(bins).agg(mean_predicted=(f"{finding}_prob", "mean"),
                                               observed_fraction=(finding, "mean"),
                                               count=(finding, "size"))
            got = points[points["job"].str.startswith(f"{num}_") & (points["finding"] == finding)]
            np.testing.assert_allclose(got[["mean_predicted", "observed_fraction", "count"]],
                                       expected, atol=1e-12)


def test_accuracy_and_epoch_figure_numbers(seeded):
    predictions, out = seeded["predictions"], seeded["out"]
    bars = pd.read_csv(out / "figure5_accuracy.csv")
    row = bars[(bars["setting"] == "multiclass") & (bars["finding"] == "edema")]
    values = [reference_metrics(predictions[n])["test/acc/edema"] for n in (4, 5)]
    assert row["accuracy"].item() == pytest.approx(np.mean(values))
    assert row["high"].item() - row["accuracy"].item() == pytest.approx(np.std(values, ddof=1))
    assert row["interval"].item() == "sd"
    points = pd.read_csv(out / "figure8_epochs_time.csv").set_index("job")
    # binary: two models of 2 epochs each; times [1+n, 2+n] per model
    assert points.loc["1_binary", "epochs"] == 4
    assert points.loc["1_binary", "epoch_time_s"] == pytest.approx(2.5)
    assert points.loc["4_multiclass", "epochs"] == 2
    assert points.loc["4_multiclass", "total_time_s"] == pytest.approx(5.0 + 6.0)


def test_confidence_intervals_are_shown_when_present(tmp_path):
    sweep = tmp_path / "sweep"
    predictions = random_predictions(seed=3)
    write_job(sweep, 0, "multilabel", predictions, ci={"test/acc/edema": (0.41, 0.72)})
    write_job(sweep, 1, "multiclass", random_predictions(seed=4))
    text = _write(sweep, tmp_path / "out")
    table3 = _markdown_section(text, "Table 3")
    accuracy = reference_metrics(predictions)["test/acc/edema"]
    assert f"{accuracy:.3f} [0.410, 0.720]" in table3
    assert "[" not in next(line for line in table3.splitlines() if line.startswith("| multiclass"))
    bars = pd.read_csv(tmp_path / "out" / "figure5_accuracy.csv")
    ci_bar = bars[(bars["setting"] == "multilabel") & (bars["finding"] == "edema")]
    assert (ci_bar["low"].item(), ci_bar["high"].item(), ci_bar["interval"].item()) == (
        0.41, 0.72, "95% CI")
    assert bars.loc[bars["setting"] == "multiclass", ["low", "high", "interval"]].isna().all().all()


def test_table1_per_stage_and_mean_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (interval, seed) in enumerate((i, s) for i in (5, 10) for s in (1, 2)):
        write_job(sweep, num, "binary", random_predictions(seed=num), stages=True,
                  overrides={"unfreeze.interval": str(interval), "seed": str(seed)})
    report = compile_report(sweep, n_bootstrap=N_BOOTSTRAP)
    records = {job: json.loads((sweep / job / "results.json").read_text())["members"]
               for job in report.jobs["job"]}
    rows = report.stage_rows
    assert len(rows) == 4 * 2 * 2  # jobs x models (binary: two) x stages
    for row in rows.itertuples():
        member = next(m for m in records[row.job] if m["name"] == row.member)
        stage = member["stages"][row.stage]
        assert (row.start_epoch, row.epochs, row.best_epoch) == (
            stage["start_epoch"], stage["epochs"], stage["best_epoch"])
        finding = member["findings"][0]
        assert rows.loc[row.Index, f"test/auroc/{finding}"] == pytest.approx(
            stage["metrics"][f"test/auroc/{finding}"])
    summary = report.table1.set_index(["setting", "member", "stage"])
    expected = [records[j][1]["stages"][1]["metrics"]["val/auroc/mean"]
                for j in ("2_binary", "3_binary")]
    cell = summary.loc[("binary unfreeze.interval=10", "binary-effusion", 1)]
    assert cell["val/auroc/mean"] == pytest.approx(np.mean(expected))
    assert cell["val/auroc/mean_sd"] == pytest.approx(np.std(expected, ddof=1))
    assert cell["runs"] == 2 and cell["blocks"] == "layer4.2"
    text = write_report(report, tmp_path / "out").read_text()
    table1 = _markdown_section(text, "Table 1")
    assert "(head only)" in table1 and "Mean ± sd over each setting's runs" in table1
    assert f"{np.mean(expected):.3f} ± {np.std(expected, ddof=1):.3f}" in table1


def test_settings_fall_back_to_the_config_without_hydra_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    for num, interval in enumerate((5, 15)):
        write_job(sweep, num, "multilabel", random_predictions(seed=num), hydra_dir=False,
                  overrides={"unfreeze.interval": str(interval)})
    jobs = load_sweep(sweep)
    # logger.wandb.name differs per job too, but it names the run, not what it trains
    assert distinguishing_keys(jobs) == ["unfreeze.interval"]
    assert describe_jobs(jobs)["setting"].tolist() == ["multilabel unfreeze.interval=5",
                                                       "multilabel unfreeze.interval=15"]


def test_metrics_that_disagree_with_predictions_are_reported(tmp_path):
    sweep = tmp_path / "sweep"
    job = write_job(sweep, 0, "multiclass", random_predictions(seed=1))
    results = json.loads((job / "results.json").read_text())
    results["metrics"]["test/auroc/effusion"] += 0.1
    (job / "results.json").write_text(json.dumps(results))
    report = compile_report(sweep, n_bootstrap=N_BOOTSTRAP)
    assert report.checks[["job", "key"]].values.tolist() == [["0_multiclass",
                                                             "test/auroc/effusion"]]
    assert "disagree" in write_report(report, tmp_path / "out").read_text()


def test_a_one_class_finding_gets_no_roc_curve_and_a_note(tmp_path):
    sweep = tmp_path / "sweep"
    predictions = random_predictions(seed=2)
    predictions["effusion"] = predictions["effusion"].where(predictions["effusion"].isna(), 1.0)
    write_job(sweep, 0, "multilabel", predictions)
    report = compile_report(sweep, n_bootstrap=N_BOOTSTRAP)
    assert report.roc["effusion"].empty and len(report.roc["edema"]) > 0
    assert any("0_multilabel: no ROC curve for effusion" in n for n in report.notes)


def test_sweep_without_results_is_an_error_naming_it(tmp_path):
    (tmp_path / "0_binary").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_sweep(tmp_path)


def test_incomplete_results_json_is_an_error_naming_it(tmp_path):
    job = write_job(tmp_path, 0, "binary", random_predictions(seed=0))
    (job / "results.json").write_text(json.dumps({"formulation": "binary"}))
    with pytest.raises(ValueError, match=r"0_binary/results.json lacks \['metrics'"):
        load_sweep(tmp_path)


def test_jobs_are_read_in_hydra_job_order(tmp_path):
    for num in (10, 2):
        write_job(tmp_path, num, "multilabel", random_predictions(seed=num))
    assert [job.name for job in load_sweep(tmp_path)] == ["2_multilabel", "10_multilabel"]


def test_cli_writes_the_newest_sweep_report_by_default(tmp_path, monkeypatch):
    multiruns = tmp_path / "outputs" / "multiruns"
    for k, name in enumerate(("2026-01-01_00-00-00", "2026-01-02_00-00-00")):
        sweep = multiruns / name
        write_job(sweep, 0, "multilabel", random_predictions(seed=k))
        (sweep / "multirun.yaml").write_text("{}\n")
        os.utime(sweep / "multirun.yaml", (1_000_000 + k, 1_000_000 + k))
    monkeypatch.setenv("CXR_LIGHTNING_HOME", str(tmp_path))
    assert newest_sweep() == multiruns / "2026-01-02_00-00-00"
    path = report_main(["--n-bootstrap", "50"])
    assert path == multiruns / "2026-01-02_00-00-00" / "report" / "report.md"
    assert path.is_file()
    assert report_main([str(multiruns / "2026-01-01_00-00-00"), "--out", str(tmp_path / "r"),
                        "--n-bootstrap", "50"]) == tmp_path / "r" / "report.md"


def test_no_sweep_under_the_outputs_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        newest_sweep(tmp_path)
