"""``cxr-study`` with ``MIMIC_CXR_ROOT`` pointing at a generated download in PhysioNet's layout
runs the paper configuration: a CPU rehearsal of the pipeline's orchestration (the cohort, the
cache and the baseline parts) with only what a CPU needs overridden."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.e2e.test_study_schedule import CPU_OVERRIDES

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_mimic_cxr_root_runs_the_paper_configuration(tmp_path, small_sample):
    study = tmp_path / "study"
    command = [sys.executable, "-m", "cxr_lightning.study", "--dir", str(study),
               "--parts", "cohort,cache,baseline", f"paths.root_dir={tmp_path}",
               "logger=csv", "trainer.max_epochs=2", *CPU_OVERRIDES]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["MIMIC_CXR_ROOT"] = str(small_sample)
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "preset paper (MIMIC_CXR_ROOT is set" in done.stderr
    state = json.loads((study / "study.json").read_text())
    assert state["preset"] == "paper" and set(state["parts"]) == {"cohort", "cache", "baseline"}
    config = yaml.safe_load((study / "config.yaml").read_text())
    assert (config["data"]["source"], config["data"]["root"]) == ("mimic_cxr", str(small_sample))
    assert (config["data"]["split"], config["unfreeze"]["until"]) == ("random_patient", "layer4.0")

    table2 = pd.read_csv(study / "1_cohort" / "table2.csv").set_index("(edema,effusion)")
    listed = (study / "1_cohort" / "download-list.txt").read_text().splitlines()
    assert table2.loc["total", "total"] == len(listed) > 0
    assert table2.loc["total", "study"] == 11548 + 5709 + 2310 + 14136
    (job,) = (study / "3_baseline").glob("*/results.json")
    results = json.loads(job.read_text())
    baseline = results["config"]
    assert baseline["data"]["source"] == "mimic_cxr" and baseline["formulation"]["name"] == (
        "binary")
    assert (baseline["unfreeze"]["max_blocks"], baseline["callbacks"]["early_stopping"][
        "patience"]) == (0, 3)
    assert [m["name"] for m in results["members"]] == ["binary-edema", "binary-effusion"]
    assert all(entry["blocks"] == [] for m in results["members"]
               for entry in m["unfreeze_history"])  # the backbone never trains
