"""A job's record, results.json: metrics, statistics and per-image test predictions."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass, field
from importlib import import_module
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from cxr_lightning.data.manifest import CohortReport
from cxr_lightning.evaluation.bootstrap import CI_LEVEL
from cxr_lightning.evaluation.evaluate import evaluate_predictions
from cxr_lightning.evaluation.metrics import probability_column
from cxr_lightning.evaluation.thresholds import operating_thresholds
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)

PREDICTION_ID_COLUMNS: tuple[str, ...] = ("image_id", "subject_id", "study_id", "view")


@dataclass
class MemberResult:
    """What training one model of a formulation produced."""

    name: str
    findings: tuple[str, ...]
    epochs: int
    epoch_times_s: list[float]
    unfreeze_history: list[dict]
    best_val_auroc_mean: float
    best_checkpoint: str
    precision: str
    """The trainer's precision as it ran (``32-true``, ``bf16-mixed``, ...)."""
    device: str
    """Where it trained (``cpu``, ``cuda``, ...)."""
    throughput: list[dict]
    """Per epoch: images/s of training and validation, data-wait share, peak memory
    (:class:`~cxr_lightning.callbacks.timing.EpochTimer`)."""
    probabilities: dict[str, list[torch.Tensor]] = field(repr=False)
    """Per split (``val``, ``test``): the best checkpoint's batched per-finding probabilities."""


def predictions_table(manifest: pd.DataFrame, members: list[MemberResult],
                      split: str = "test") -> pd.DataFrame:
    """Per-image table of one split: ids, labels and each finding's probability from its model."""
    table = manifest[list(PREDICTION_ID_COLUMNS) + list(FINDINGS)].copy()
    for member in members:
        probabilities = torch.cat(member.probabilities[split]).double().numpy()
        if len(probabilities) != len(table):
            raise RuntimeError(f"{member.name}: {len(probabilities)} {split} predictions for "
                               f"{len(table)} {split} images")
        if not np.isfinite(probabilities).all():
            raise RuntimeError(
                f"{member.name}: {int((~np.isfinite(probabilities)).sum())} {split} probabilities "
                f"are not finite: training diverged (checkpoint {member.best_checkpoint}); "
                "lower model.lr or check the inputs")
        if (probabilities.std(axis=0) == 0).any():
            log.warning("%s predicts one constant probability for every %s image: its AUROC "
                        "is 0.5 by construction, not a measured result", member.name, split)
        for column, finding in enumerate(member.findings):
            table[probability_column(finding)] = probabilities[:, column]
    return table


def evaluation_settings(cfg: DictConfig) -> dict[str, Any]:
    """How the job is evaluated: ``evaluation.n_bootstrap`` and ``evaluation.target_sensitivity``
    (conf/evaluation), the bootstrap seeded by ``seed``."""
    return {
        "n_bootstrap": int(cfg.evaluation.n_bootstrap),
        "target_sensitivity": float(cfg.evaluation.target_sensitivity),
        "seed": int(cfg.seed),
        "ci_level": CI_LEVEL,
        "ci_method": "patient-level cluster bootstrap (subject_id), percentile interval",
        "decision_rule": "positive when probability > threshold",
    }


REPRODUCIBILITY_PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "pytorch_lightning", "albumentations", "numpy")


def reproducibility(cfg: DictConfig) -> dict[str, Any]:
    """What a rerun needs to match: ``seed``, ``trainer.deterministic`` (``None`` when unset:
    Lightning leaves torch's setting alone), the libraries' versions, cuDNN's (``None`` without
    CUDA) and torch's CPU thread count (CPU reductions can split work by thread)."""
    versions = {name: import_module(name).__version__ for name in REPRODUCIBILITY_PACKAGES}
    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return {
        "seed": int(cfg.seed),
        "deterministic": OmegaConf.select(cfg, "trainer.deterministic", default=None),
        "versions": {"python": platform.python_version(), **versions,
                     "cuda": torch.version.cuda,
                     "cudnn": cudnn},
        "torch_threads": torch.get_num_threads(),
    }


def job_results(cfg: DictConfig, formulation: str, members: list[MemberResult],
                predictions: pd.DataFrame, val_predictions: pd.DataFrame,
                cohort: CohortReport) -> dict[str, Any]:
    """The results.json content: metrics (every key of
    :func:`~cxr_lightning.evaluation.evaluate.evaluate_predictions`, CIs included), the
    operating ``thresholds`` chosen on validation (finding -> {"0.5": 0.5, "youden": t,
    "sens90": t}, applied as ``probability > t``), the ``evaluation`` settings, training
    statistics, what a rerun must match (``reproducibility``), cohort, members, config, and the
    per-image test (``predictions``) and validation (``val_predictions``) probabilities."""
    settings = evaluation_settings(cfg)
    thresholds = operating_thresholds(val_predictions, settings["target_sensitivity"])
    metrics = evaluate_predictions(predictions, val_predictions, thresholds=thresholds,
                                   n_bootstrap=settings["n_bootstrap"], seed=settings["seed"])
    epoch_times = [t for m in members for t in m.epoch_times_s]
    metrics["train/epochs"] = sum(m.epochs for m in members)
    metrics["train/total_time_s"] = sum(epoch_times)
    metrics["train/epoch_time_s"] = sum(epoch_times) / max(len(epoch_times), 1)
    return {
        "formulation": formulation,
        "metrics": metrics,
        "thresholds": thresholds,
        "evaluation": settings,
        "reproducibility": reproducibility(cfg),
        "members": [{k: v for k, v in asdict(m).items() if k != "probabilities"}
                    for m in members],
        "cohort": asdict(cohort),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "predictions": json.loads(predictions.to_json(orient="records")),
        "val_predictions": json.loads(val_predictions.to_json(orient="records")),
    }


def results_summary(results: dict[str, Any]) -> str:
    """One line of a job's test AUROC and accuracy per finding."""
    return ", ".join(f"{k}={_formatted(results['metrics'][k])}" for k in
                     (f"test/{m}/{f}" for m in ("auroc", "acc") for f in FINDINGS))


def _formatted(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
