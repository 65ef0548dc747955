"""A CPU rehearsal of the study through the real CLI, the way a user with a download starts it:
``MIMIC_CXR_ROOT`` pointing at a DICOM project whose tables are only in the sibling MIMIC-CXR-JPG
project (a tiny generated sample), the paper configuration with only what a CPU needs changed
(backbone, weights, image size, loading). Its ``unfreeze``, ``callbacks`` and ``trainer`` keys
are unchanged; the stage boundaries are checked against the rule recomputed by hand from the
logged validation AUROCs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INTERVAL, PATIENCE, MAX_EPOCHS = 10, 3, 40  # the paper configuration's
CPU_OVERRIDES = ["model=resnet18", "model.weights=none", "data.image_size=32",
                 "data.batch_size=32", "data.num_workers=0", "data.cache_workers=1"]


def settings_by_hand(scores: list[float], n_stages: int) -> tuple[list[int], int]:
    """(start epoch of each setting, epochs run) under the study's rule: a setting ends after
    ``INTERVAL`` epochs or when the score has not improved for ``PATIENCE`` epochs; the last
    setting's end is the run's."""
    starts, best, wait = [0], None, 0
    for epoch, score in enumerate(scores):
        if best is None or score > best:
            best, wait = score, 0
        else:
            wait += 1
        if wait >= PATIENCE or epoch + 1 - starts[-1] >= INTERVAL:
            if len(starts) == n_stages:
                return starts, epoch + 1
            starts.append(epoch + 1)
            best, wait = None, 0
    return starts, len(scores)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, small_sample):
    home = tmp_path_factory.mktemp("study")
    run_dir = home / "run"
    assert not list(small_sample.glob("mimic-cxr-2.0.0-*"))  # the tables are elsewhere
    command = [sys.executable, "-m", "cxr_lightning.train", "formulation=multilabel",
               f"paths.root_dir={home}", f"hydra.run.dir={run_dir}", "logger=csv",
               *CPU_OVERRIDES]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    env["MIMIC_CXR_ROOT"] = str(small_sample)
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return run_dir, done.stdout + done.stderr


def test_the_paper_schedule_runs_setting_by_setting(rehearsal, small_sample):
    run_dir, log = rehearsal
    results = json.loads((run_dir / "results.json").read_text())
    config = results["config"]
    assert (config["data"]["source"], config["data"]["root"]) == ("mimic_cxr", str(small_sample))
    assert (config["trainer"]["max_epochs"], config["unfreeze"]["interval"]) == (
        MAX_EPOCHS, INTERVAL)
    assert (config["unfreeze"]["patience"], config["unfreeze"]["until"]) == (
        PATIENCE, "layer4.0")
    assert (config["data"]["split"], config["data"]["augment"]) == ("random_patient", False)
    (member,) = results["members"]
    history = member["unfreeze_history"]
    # ResNet18 has two conv5 blocks: head, + layer4.1, + layer4.0, and never further
    assert [entry["blocks"] for entry in history] == [[], ["layer4.1"], ["layer4.0"]]
    metrics = pd.read_csv(run_dir / "csv" / member["name"] / "metrics.csv")
    scores = metrics.dropna(subset=["val/auroc/mean"]).sort_values("epoch")["val/auroc/mean"]
    starts, epochs = settings_by_hand(scores.tolist(), n_stages=len(history))
    assert [entry["epoch"] for entry in history] == starts
    assert member["epochs"] == epochs == len(scores) <= MAX_EPOCHS
    lengths = [b - a for a, b in zip(starts, [*starts[1:], epochs], strict=True)]
    assert max(lengths) <= INTERVAL
    assert min(lengths) < INTERVAL  # a plateau ended a setting early
    assert [stage["start_epoch"] for stage in member["stages"]] == starts
    assert (member["precision"], member["device"]) == ("32-true", "cpu")
    assert len(member["throughput"]) == epochs
    assert all(r["train_img_s"] > 0 and 0 <= r["data_wait_fraction"] < 1
               for r in member["throughput"])
    assert [r["stage"] for r in member["throughput"]] == [
        stage for stage, length in enumerate(lengths) for _ in range(length)]
    assert "restored the weights of its best val/auroc/mean" in log
