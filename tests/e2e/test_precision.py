"""trainer.precision=bf16-mixed on the CPU (torch autocasts bf16 there too) through the real
CLI: training over a stage change, validation and prediction run in bf16, and every probability
written to results.json is float32, not a bf16 value (~3 significant digits, ties at 1.0)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxr_lightning.findings import FINDINGS

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_bf16_mixed_writes_float32_probabilities(tmp_path, cli_data):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    command = [sys.executable, "-m", "cxr_lightning.train", "formulation=multilabel",
               "trainer.accelerator=cpu", "trainer.precision=bf16-mixed",
               "data.sample.n_subjects=40", "data.image_size=32", "trainer.max_epochs=2",
               "unfreeze.interval=1", "unfreeze.max_blocks=1", "logger=csv",
               f"paths.root_dir={tmp_path}", f"paths.data_dir={cli_data}",
               f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["members"][0]["precision"] == "bf16-mixed"
    probabilities = torch.tensor([p[f"{finding}_prob"] for p in results["predictions"]
                                  for finding in FINDINGS], dtype=torch.float64)
    assert len(probabilities) == 2 * len(results["predictions"]) > 0
    as_bf16 = probabilities.to(torch.bfloat16).double()
    bf16_valued = probabilities[probabilities == as_bf16]
    assert len(bf16_valued) == 0, f"bf16-valued probabilities: {bf16_valued[:5].tolist()}"
