"""Experiment tracking: a local CSV log always, Weights & Biases offline unless opted in.

Privacy: nothing identifying leaves the machine by default. W&B runs offline
(``logger.wandb.mode``, default ``${oc.env:WANDB_MODE,offline}``), console capture and code saving
are off, checkpoints are not uploaded, and only the config, curves and summary metrics are
logged: never images, DICOM headers or patient/image identifiers. wandb's own telemetry and
error reporting (which resolve and post to a remote host even offline) are off unless
``WANDB_ERROR_REPORTING=true`` is set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from cxr_lightning.csv_log import ResumableCSVLogger
from cxr_lightning.evaluation.curves import roc_curve
from cxr_lightning.findings import FINDINGS

log = logging.getLogger(__name__)


def member_loggers(cfg: DictConfig, output_dir: Path, member: str, prefix: str) -> list[Logger]:
    """Loggers for one model of a job: a CSV log in the output directory (``logger.csv``), and
    the job's W&B run (``logger.wandb.enabled``).

    Every model of one job shares one W&B run; ``prefix`` keeps their curves apart (binary).
    """
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(ResumableCSVLogger(save_dir=str(output_dir), name="csv", version=member))
    wandb_cfg = cfg.logger.wandb
    if wandb_cfg.enabled:
        disable_wandb_telemetry()
        loggers.append(JobWandbLogger(
            experiment=wandb.run,  # binary's second model joins the job's run (None: a new run)
            entity=wandb_cfg.entity,
            notes=wandb_cfg.notes,
            project=wandb_cfg.project,
            mode=wandb_cfg.mode,
            group=wandb_cfg.group or job_group(),
            job_type=cfg.formulation.name,
            name=wandb_cfg.name,
            tags=list(wandb_cfg.tags),
            save_dir=str(output_dir),
            log_model=wandb_cfg.log_model,
            prefix=prefix,
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(console="off", save_code=False),
        ))
    return loggers


class JobWandbLogger(WandbLogger):
    """:class:`WandbLogger` that leaves out ``anonymous``: Lightning passes it to ``wandb.init``
    always (``None`` when not asked for), and wandb warns that the setting has no effect."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)


def disable_wandb_telemetry() -> None:
    """Turn wandb's telemetry and error reporting off (its service reads
    ``WANDB_ERROR_REPORTING`` when it starts) unless the user set that variable."""
    if os.environ.setdefault(wandb.env.ERROR_REPORTING, "false").lower() != "false":
        log.info("%s=%s: wandb may send telemetry and error reports", wandb.env.ERROR_REPORTING,
                 os.environ[wandb.env.ERROR_REPORTING])


def job_group() -> str:
    """The W&B group of this job: its multirun's directory name, or its run directory's name."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return Path(hydra_cfg.runtime.output_dir).name


def log_job_summary(summary: dict[str, Any]) -> None:
    """Write scalar job results into the active W&B run's summary (no-op without a run)."""
    if wandb.run is None:
        return
    wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})


def log_job_plots(predictions: pd.DataFrame, metrics: dict[str, Any]) -> None:
    """Per finding, the test ROC curve (torchmetrics) and the confusion matrix at 0.5 (from
    ``metrics``) as W&B charts built from numbers: no images, no identifiers. No-op without a
    run."""
    if wandb.run is None:
        return
    charts = {}
    for finding in FINDINGS:
        try:
            curve = roc_curve(predictions, finding)
        except ValueError as error:  # one class among the test labels: no curve to draw
            log.warning("No W&B ROC chart: %s", error)
        else:
            roc = wandb.Table(dataframe=curve[["fpr", "tpr"]])
            auroc = metrics[f"test/auroc/{finding}"]
            charts[f"test/roc/{finding}"] = wandb.plot.line(
                roc, "fpr", "tpr", title=f"Test ROC, {finding} (AUROC {auroc:.3f})")
        (tn, fp), (fn, tp) = metrics[f"test/confusion/{finding}"]
        counts = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=[
            ["absent", "absent", tn], ["absent", "present", fp],
            ["present", "absent", fn], ["present", "present", tp]])
        charts[f"test/confusion_matrix/{finding}"] = wandb.plot_table(
            "wandb/confusion_matrix/v1", counts,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": f"Test confusion matrix at 0.5, {finding}"})
    wandb.run.log(charts)


def finish_tracking(failed: bool = False) -> None:
    """Close the job's W&B run (marked failed when ``failed``), so multiruns and failures leave
    no dangling run."""
    if wandb.run is not None:
        log.info("W&B run files: %s", Path(wandb.run.dir).parent)
        wandb.finish(exit_code=1 if failed else 0)
