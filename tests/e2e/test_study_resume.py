"""``cxr-study`` through its real command line: SIGKILLed partway and rerun, it finishes without
redoing the jobs that had completed (tiny CPU settings, experiment II and the report only)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.sample.n_subjects=40", "data.image_size=32", "trainer.max_epochs=1",
        "unfreeze.max_blocks=1", "logger=csv"]


def _study(home: Path, data: Path, *, wait: bool) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cxr_lightning.study", "--dir", str(home / "study"),
               "--parts", "formulations,report", "--seeds", "1",
               f"paths.root_dir={home}", f"paths.data_dir={data}", *TINY]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    if wait:
        return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
    # its own session: the kill takes the study and the cxr-train multirun it started
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_killed_partway_the_rerun_redoes_nothing_complete(tmp_path, cli_data):
    sweep = tmp_path / "study" / "5_formulations"
    first = _study(tmp_path, cli_data, wait=False)
    deadline = time.monotonic() + 600
    while not list(sweep.glob("*/results.json")) and time.monotonic() < deadline:
        assert first.poll() is None, "the study ended before any job completed"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    complete = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    assert 1 <= len(complete) < 3, complete
    assert not (tmp_path / "study" / "REPORT.md").exists()

    second = _study(tmp_path, cli_data, wait=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    assert sorted(after) == ["0_binary", "1_multilabel", "2_multiclass"]
    assert all(after[name] == mtime for name, mtime in complete.items())  # not redone
    log = (sweep / "cxr-train.log").read_text()
    for name in complete:
        assert f"{sweep / name} is complete (results.json); skipping it" in log
    state = json.loads((tmp_path / "study" / "study.json").read_text())
    assert {state["parts"][p]["status"] for p in ("formulations", "report")} == {"done"}
    report = (tmp_path / "study" / "REPORT.md").read_text()
    assert "multiclass (study, published)" in report and "0.826" in report
    assert "study: 4/4 jobs done, 0 left" in (tmp_path / "study" / "progress.txt").read_text()
