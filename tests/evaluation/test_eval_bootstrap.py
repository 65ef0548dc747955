"""Patient-level cluster bootstrap: resampling, intervals, and why clustering matters."""

import numpy as np
import pandas as pd
import pytest

from cxr_lightning.evaluation.bootstrap import (
    cluster_bootstrap,
    percentile_interval,
    resampled_sums,
)
from cxr_lightning.evaluation.evaluate import subset_metrics
from cxr_lightning.evaluation.resampled import rank_metrics
from tests.helpers.eval_tables import prediction_table

AT_HALF = {"edema": {"0.5": 0.5}, "effusion": {"0.5": 0.5}}


def test_each_resample_draws_as_many_patients_as_there_are_seeded():
    clusters = np.array(["p3", "p1", "p1", "p2", "p3", "p3"])
    first = cluster_bootstrap(clusters, n_bootstrap=500, seed=11)
    assert first.counts.shape == (500, 3)
    assert (first.counts.sum(axis=1) == 3).all()
    # images of one patient share its code, so they are always drawn together
    assert first.codes[1] == first.codes[2] and first.codes[0] == first.codes[4]
    assert np.array_equal(first.counts, cluster_bootstrap(clusters, 500, seed=11).counts)
    assert not np.array_equal(first.counts, cluster_bootstrap(clusters, 500, seed=12).counts)
    # each patient is drawn once per resample on average
    assert first.counts.mean(axis=0) == pytest.approx(np.ones(3), abs=0.1)


def test_resampled_sums_weight_each_image_by_its_patients_draws():
    clusters = np.array([7, 7, 9, 5])
    values = np.array([1.0, 2.0, 10.0, 100.0])
    bootstrap = cluster_bootstrap(clusters, n_bootstrap=50, seed=0)
    sums = resampled_sums(bootstrap, values)[:, 0]
    by_hand = [sum(bootstrap.counts[b, bootstrap.codes[i]] * values[i] for i in range(4))
               for b in range(50)]
    assert sums == pytest.approx(by_hand)


def test_images_without_a_patient_are_an_error():
    with pytest.raises(ValueError, match="no subject_id"):
        cluster_bootstrap(pd.Series([1, None, 2]), n_bootstrap=5)


def test_percentile_interval_skips_undefined_resamples():
    replicates = np.r_[np.arange(1.0, 101.0), [np.nan] * 5]
    low, high = percentile_interval(replicates, level=0.9)
    assert (low, high) == pytest.approx(tuple(np.percentile(np.arange(1.0, 101.0), [5, 95])))
    assert np.isnan(percentile_interval(np.full(10, np.nan))[0])


def _auroc_interval_width(table, clusters):
    bootstrap = cluster_bootstrap(clusters, n_bootstrap=1000, seed=5)
    replicates = rank_metrics(bootstrap, table["effusion"].to_numpy().astype(int),
                              table["effusion_prob"].to_numpy())["auroc"]
    low, high = percentile_interval(replicates)
    return high - low


def test_clustering_matters_duplicated_images_do_not_narrow_the_patient_interval():
    """Each patient's image copied 6 times carries no new information: the patient bootstrap
    interval keeps its width, while an image-level bootstrap wrongly shrinks ~sqrt(6)-fold."""
    table = prediction_table(300, 300, seed=6, masked=0.0)
    table["subject_id"] = np.arange(300)  # one image per patient
    copies = pd.concat([table] * 6, ignore_index=True)
    patient = _auroc_interval_width(table, table["subject_id"])
    patient_copies = _auroc_interval_width(copies, copies["subject_id"])
    naive_copies = _auroc_interval_width(copies, np.arange(len(copies)))
    assert patient_copies == pytest.approx(patient, rel=0.1)
    assert naive_copies < 0.6 * patient_copies  # 1/sqrt(6) = 0.41
    assert naive_copies == pytest.approx(patient / np.sqrt(6), rel=0.2)


def test_stage_metrics_intervals_widen_when_images_cluster_within_patients():
    """The same 1200 images, as 1200 independent patients or as 60 patients of 20 similar
    images each (one label, nearby probabilities): the patient bootstrap sees ~60 independent
    units in the second case and widens the accuracy and AUROC intervals accordingly."""
    rng = np.random.default_rng(8)
    label = np.repeat(rng.integers(0, 2, 60), 20).astype(float)
    logit = np.repeat(rng.normal(0, 1, 60), 20) + 1.5 * (label - 0.5) + rng.normal(0, 0.1, 1200)
    table = pd.DataFrame({"subject_id": np.arange(1200), "edema": label, "effusion": label,
                          "edema_prob": 1 / (1 + np.exp(-logit))})
    table["effusion_prob"] = table["edema_prob"]
    clustered = table.assign(subject_id=np.repeat(np.arange(60), 20))
    widths = {}
    for name, frame in (("independent", table), ("clustered", clustered)):
        metrics = subset_metrics(frame, "test", AT_HALF, n_bootstrap=500, seed=1)
        widths[name] = [metrics[f"test/{m}/edema_ci_high"] - metrics[f"test/{m}/edema_ci_low"]
                        for m in ("acc", "auroc")]
    for independent, clustered_width in zip(widths["independent"], widths["clustered"],
                                            strict=True):
        assert clustered_width > 2.5 * independent  # sqrt(20) = 4.5 for identical copies
