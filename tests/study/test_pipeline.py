"""The pipeline's bookkeeping, with the parts' work replaced: a failed part does not stop the
later ones, a complete part is skipped, and study.json records each part's status."""

import json

from cxr_lightning.study.parts import PART_NAMES, study_parts
from cxr_lightning.study.pipeline import DONE_FILE, Study


def test_a_failed_part_leaves_the_others_running_and_a_complete_one_is_skipped(tmp_path,
                                                                                monkeypatch):
    ran = []

    def fake_part(self, part, record, progress):
        ran.append(part.name)
        return part.name != "baseline"  # the baseline's multirun exits 1

    monkeypatch.setattr(Study, "_run_part", fake_part)
    (tmp_path / "2_cache").mkdir()
    (tmp_path / "2_cache" / DONE_FILE).write_text("{}")  # the cache completed in a past launch
    study = Study(tmp_path, "sample", ["logger=csv"], seeds=2)
    assert study.run(study_parts(PART_NAMES, "sample", 2)) is False
    assert ran == ["cohort", "baseline", "table1", "formulations", "report"]
    state = json.loads((tmp_path / "study.json").read_text())
    assert {name: part["status"] for name, part in state["parts"].items()} == {
        "cohort": "done", "baseline": "failed", "table1": "done", "formulations": "done",
        "report": "done"}
    assert state["parts"]["formulations"]["overrides"] == [
        "seed=1,2", "formulation=binary,multilabel,multiclass"]
    assert (state["preset"], state["seeds"], state["overrides"]) == ("sample", 2, ["logger=csv"])
    # 1 + 1 + 1 + 1 + 6 + 1 jobs; the training parts' count their results.json (none here):
    # the cohort, the cache and the report are done
    assert "study: 3/11 jobs done, 8 left" in (tmp_path / "progress.txt").read_text()
