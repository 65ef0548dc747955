"""The study's parts and its progress view, against hand counts and hand arithmetic."""

import pytest

from cxr_lightning.study import progress as progress_module
from cxr_lightning.study.parts import PART_NAMES, study_parts, sweep_size
from cxr_lightning.study.progress import Progress, duration


@pytest.mark.parametrize(("overrides", "jobs"), [
    (["preset=sample", "experiment=baseline_frozen"], 1),
    (["formulation=binary,multilabel,multiclass", "seed=1,2"], 6),
    (["unfreeze.schedule=[[7,1],[10,2],[14,3]]", "trainer.max_epochs=16"], 1),  # a list, no sweep
    (["formulation=binary,multilabel,multiclass", "seed=1,2,3", "model.lr=1e-3,1e-4"], 18),
])
def test_sweep_size_counts_jobs_as_hydra_launches_them(overrides, jobs):
    assert sweep_size(overrides) == jobs


def test_parts_run_in_the_study_order_with_the_seeds_asked_for():
    parts = study_parts(["report", "formulations", "cohort"], "paper", seeds=2)
    assert [p.name for p in parts] == ["cohort", "formulations", "report"]
    assert [p.trains for p in parts] == [False, True, False]
    assert parts[1].overrides == ("seed=1,2", "formulation=binary,multilabel,multiclass")
    every = study_parts(PART_NAMES, "sample", seeds=1)
    table1 = next(p for p in every if p.name == "table1")
    assert "experiment=exp1_table1" in table1.overrides
    assert "trainer.max_epochs=16" in table1.overrides  # scaled on the sample only
    assert "trainer.max_epochs=16" not in next(
        p for p in study_parts(PART_NAMES, "paper", 1) if p.name == "table1").overrides


def test_progress_eta_is_the_jobs_left_times_the_mean_measured_job(tmp_path, monkeypatch):
    clock = iter([0.0, 0.0, 100.0, 400.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    view = Progress(tmp_path, total_jobs=6, done={"cohort": 1, "formulations": 0})
    view.start_part()                                   # t = 0
    assert "ETA unknown" in view.update("formulations", 0, 5)
    # one job after 100 s: 4 left of the part + 0 elsewhere -> 4 x 100 s
    assert view.update("formulations", 1, 5).endswith("ETA 6m40s (mean of 1 measured jobs)")
    # two more at t = 400 s: each 150 s; measured 100, 150, 150 -> mean 133.3 s, 2 jobs left
    line = view.update("formulations", 3, 5, failed=1)
    assert "part formulations: 3/5 jobs done, 1 failed" in line
    assert "study: 4/6 jobs done, 2 left; ETA 4m27s (mean of 3 measured jobs)" in line
    assert (tmp_path / "progress.txt").read_text().splitlines()[0] == line


def test_untimed_parts_are_counted_but_not_measured(tmp_path):
    view = Progress(tmp_path, total_jobs=3, done={"cohort": 0})
    assert "1/3 jobs done" in view.update("cohort", 1, 1, timed=False)
    assert view.measured == [] and view.eta() is None


@pytest.mark.parametrize(("seconds", "text"), [(12, "12s"), (245, "4m05s"), (3720, "1h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text
