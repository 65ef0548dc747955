"""The end of a multirun when the disk is full: every job's outcome is still reported."""

import logging

import pytest
from omegaconf import OmegaConf

from cxr_lightning.job_record import JobRecord
from cxr_lightning.sweep import ComparisonTable
from tests.helpers.disk import failing_on_a_full_disk, fill, make_full, small_disk

COMPLETE = {"formulation": "multilabel", "overrides": ["seed=1"], "metrics": {},
            "members": [], "predictions": []}


def test_a_full_disk_at_the_end_of_a_sweep_still_names_its_failed_jobs(tmp_path, caplog,
                                                                        monkeypatch):
    """Job 0 completed; job 1 failed on the full disk (recorded); job 2's failed.json was left
    empty by an older version. On a full tmpfs where one can be mounted, else a simulated one."""
    with small_disk(tmp_path / "disk") as disk:
        sweep = disk or tmp_path
        jobs = [JobRecord(sweep / f"{k}_multilabel") for k in range(3)]
        for job in jobs:
            job.directory.mkdir()
        jobs[0].write_results(COMPLETE)
        jobs[1].start(OmegaConf.create({"seed": 2}))
        jobs[2].failed_path.write_text("")
        make_full(disk, monkeypatch)
        jobs[1].record_failure(["seed=2"], failing_on_a_full_disk())
        if disk is not None:
            fill(disk)  # again: failed.json gave back the rest of its reservation
        config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
        with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as ended:
            ComparisonTable().on_multirun_end(config)
        assert ended.value.code == 1
        assert "Comparison of 1 jobs" in caplog.text
        assert "2 job(s) of the multirun" in caplog.text
        assert "1_multilabel" in caplog.text and "OSError: [Errno 28]" in caplog.text
        assert "2_multilabel" in caplog.text and "failed.json is empty or broken" in caplog.text
        assert not list(sweep.rglob("*.partial"))
