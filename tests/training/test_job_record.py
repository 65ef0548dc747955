"""JobRecord: one owner of a job directory's files and one rule for "complete"."""

import json
import logging

import pytest
from omegaconf import OmegaConf

from cxr_lightning.job_record import (
    IncompleteResultsError,
    JobRecord,
    sweep_jobs,
)
from cxr_lightning.sweep import comparison_table
from tests.helpers.disk import failing_on_a_full_disk, make_full
from tests.helpers.disk import small_disk as small_disk_at

COMPLETE = {"formulation": "binary", "metrics": {}, "members": [], "predictions": []}


def test_results_are_none_until_written_then_read_back(tmp_path):
    record = JobRecord(tmp_path)
    assert record.read_results() is None
    record.write_results(COMPLETE)
    assert record.read_results() == COMPLETE
    assert not list(tmp_path.glob("*.partial"))  # written through a rename


def test_incomplete_results_are_refused_on_write_and_named_on_read(tmp_path):
    record = JobRecord(tmp_path)
    with pytest.raises(ValueError, match="predictions"):
        record.write_results({k: v for k, v in COMPLETE.items() if k != "predictions"})
    assert not record.results_path.exists()
    record.results_path.write_text(json.dumps({"formulation": "binary"}))
    with pytest.raises(IncompleteResultsError, match=r"results.json lacks \['metrics'"):
        record.read_results()
    record.results_path.write_text('{"formulation": ')
    with pytest.raises(IncompleteResultsError, match="not valid JSON"):
        record.read_results()


def test_a_failure_is_recorded_with_its_traceback_and_cleared_by_a_new_start(tmp_path):
    record = JobRecord(tmp_path)
    try:
        raise RuntimeError("diverged")
    except RuntimeError as error:
        record.record_failure(["model.lr=-1"], error)
    failure = record.read_failure()
    assert failure["overrides"] == ["model.lr=-1"]
    assert failure["error"] == "RuntimeError: diverged"
    assert 'raise RuntimeError("diverged")' in failure["traceback"]
    record.start(OmegaConf.create({"seed": 1}))
    assert record.read_failure() is None
    assert (tmp_path / "config_resolved.yaml").read_text() == "seed: 1\n"
    assert record.holds_only_start_files()
    (tmp_path / "checkpoints").mkdir()
    assert not record.holds_only_start_files()


def test_sweep_jobs_are_the_finished_ones_in_hydra_job_order(tmp_path):
    for name in ("10_binary", "2_multiclass", "1_multilabel", "3_running"):
        (tmp_path / name).mkdir()
    JobRecord(tmp_path / "10_binary").write_results(COMPLETE)
    JobRecord(tmp_path / "2_multiclass").write_results(COMPLETE)
    (tmp_path / "1_multilabel" / "failed.json").write_text("{}")
    assert [job.name for job in sweep_jobs(tmp_path)] == [
        "1_multilabel", "2_multiclass", "10_binary"]


@pytest.fixture
def small_disk(tmp_path):
    with small_disk_at(tmp_path / "disk") as mount:
        yield mount


def test_a_full_disk_still_leaves_a_readable_failure_record(tmp_path, small_disk, monkeypatch):
    """On a full tmpfs where the test may mount one; else the full disk is simulated: every
    new write fails as it would."""
    directory = small_disk or tmp_path
    record = JobRecord(directory)
    record.start(OmegaConf.create({"seed": 1}))
    make_full(small_disk, monkeypatch)
    record.record_failure(["seed=1"], failing_on_a_full_disk())
    assert record.read_failure()["error"] == "OSError: [Errno 28] No space left on device"
    assert record.read_failure()["overrides"] == ["seed=1"]


@pytest.mark.parametrize("content", ["", '{"overrides": ["seed=1"], "err'])
def test_an_empty_or_broken_failure_record_is_read_as_such(tmp_path, caplog, content):
    record = JobRecord(tmp_path)
    record.failed_path.write_text(content)
    with caplog.at_level(logging.WARNING):
        failure = record.read_failure()
    assert failure["error"].startswith("unknown: failed.json is empty or broken")
    assert f"{record.failed_path} is empty or broken" in caplog.text
def test_the_comparison_table_has_a_column_per_swept_override(tmp_path):
    # -m formulation=binary model/optimizer=adamw,sgd logger=csv: only the optimizer differs
    for number, optimizer, auroc in ((0, "adamw", 0.75), (1, "sgd", 0.5)):
        (tmp_path / f"{number}_binary").mkdir()
        JobRecord(tmp_path / f"{number}_binary").write_results(
            COMPLETE | {"metrics": {"test/auroc/edema": auroc},
                        "overrides": ["formulation=binary", f"model/optimizer={optimizer}",
                                      "logger=csv"]})
    table = comparison_table(tmp_path)
    assert list(table.columns[:3]) == ["job", "formulation", "model/optimizer"]
    assert "logger" not in table.columns  # the same in every job: not swept
    assert table[["job", "model/optimizer", "test/auroc/edema"]].values.tolist() == [
        ["0_binary", "adamw", 0.75], ["1_binary", "sgd", 0.5]]
