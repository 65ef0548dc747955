"""A validation split holding one class of a finding: AUROC undefined, never a crash.

The mean AUROC (model selection, the sweep's metric) is the mean of the defined findings'
AUROCs, with a warning; the job's metric is NaN (a failed trial) only when none is defined.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from cxr_lightning.evaluation.metrics import finding_metrics
from cxr_lightning.findings import FINDINGS
from cxr_lightning.job import optimized_value
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _predictions(edema: np.ndarray, effusion: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"edema": edema, "effusion": effusion,
                         "edema_prob": rng.random(len(edema)),
                         "effusion_prob": rng.random(len(edema))})


def test_mean_auroc_is_the_mean_of_the_defined_findings(caplog):
    table = _predictions(np.zeros(40), np.r_[np.zeros(20), np.ones(20)])
    with caplog.at_level(logging.WARNING):
        metrics = finding_metrics(table, "val")
    expected = roc_auc_score(table["effusion"], table["effusion_prob"])
    assert math.isnan(metrics["val/auroc/edema"])
    assert metrics["val/auroc/mean"] == pytest.approx(expected, abs=1e-6)
    assert "val/auroc is undefined for edema" in caplog.text


def test_mean_auroc_is_nan_when_no_finding_is_defined():
    assert math.isnan(finding_metrics(_predictions(np.zeros(9), np.ones(9)), "val")
                      ["val/auroc/mean"])


@pytest.mark.parametrize("value", [None, float("nan")])
def test_an_undefined_optimized_metric_is_nan_not_a_crash(value, caplog):
    cfg = OmegaConf.create({"optimized_metric": "val/auroc/mean"})
    with caplog.at_level(logging.WARNING):
        result = optimized_value(cfg, {"metrics": {"val/auroc/mean": value}})
    assert math.isnan(result) and "undefined" in caplog.text


def test_classifier_logs_nan_and_the_mean_of_the_defined_findings(caplog):
    """Validation with no edema positive: val/auroc/edema NaN (torchmetrics alone gives 0),
    val/auroc/mean = sklearn's effusion AUROC, one warning."""
    torch.manual_seed(0)
    images = torch.randn(24, 3, 32, 32)
    labels = torch.stack([torch.zeros(24), torch.tensor([0.0, 1.0] * 12)], dim=1)
    batches = [{"image": images[i:i + 8], "labels": labels[i:i + 8]} for i in range(0, 24, 8)]
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights="none")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    with caplog.at_level(logging.WARNING):
        trainer.validate(model, DataLoader(batches, batch_size=None), verbose=False)
        trainer.validate(model, DataLoader(batches, batch_size=None), verbose=False)
    model.eval()
    with torch.no_grad():
        probabilities = torch.sigmoid(model(images))[:, FINDINGS.index("effusion")]
    expected = roc_auc_score(labels[:, 1].numpy(), probabilities.numpy())
    logged = trainer.callback_metrics
    assert math.isnan(float(logged["val/auroc/edema"]))
    assert float(logged["val/auroc/mean"]) == pytest.approx(expected, abs=1e-5)
    assert caplog.text.count("val/auroc/edema is undefined") == 1


@pytest.mark.slow
@pytest.mark.realdata
def test_nih_sample_binary_job_with_a_one_class_validation_split(shared_data, tmp_path):
    """The real NIH sample: the edema model's validation split holds no positive. The job
    completes (exit 0, no traceback) and its val/auroc/mean is the effusion AUROC."""
    command = [sys.executable, "-m", "cxr_lightning.train", "preset=sample", "data=nih",
               "formulation=binary", f"data.root={shared_data / 'nih_chestxray14_64px'}",
               f"paths.root_dir={tmp_path}", "trainer.max_epochs=2", "unfreeze.max_blocks=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NIH_"))}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-5000:]
    (results,) = (tmp_path / "outputs" / "runs").glob("*/results.json")
    metrics = json.loads(results.read_text())["metrics"]
    assert metrics["val/auroc/edema"] is None
    assert metrics["val/auroc/mean"] == pytest.approx(metrics["val/auroc/effusion"])
    assert "val/auroc/edema is undefined" in output
