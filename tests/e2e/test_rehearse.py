"""make rehearse at its reduced CPU size through the real command: a config change that breaks
the paper configuration's path (as `+evaluation.n_bootstrap` once did) fails here."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["model=resnet50", "data.image_size=64"]  # four settings, like ResNet152


@pytest.mark.slow
def test_the_reduced_rehearsal_runs_the_paper_configuration_and_projects_it():
    done = subprocess.run(["make", "-s", "rehearse",
                           "BENCH_ARGS=--device cpu --subjects 40 --fullsize-dicoms 2 "
                           # ResNet152 at 512 would take ~10 min on 2 cores; the paper
                           # configuration is composed all the same
                           f"--overrides {' '.join(SMOKE)}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["device"], figures["models"]) == ("cpu", 1)
    assert figures["overrides"][-2:] == SMOKE
    # the paper's four settings, each measured once
    assert len(figures["train_img_s_per_setting"]) == 4
    rates = [*figures["train_img_s_per_setting"].values(), figures["val_img_s"],
             figures["cache_build_img_s"]]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    assert figures["projection"]["total_h_worst_case"] > figures["projection"]["cache_build_h"] > 0
