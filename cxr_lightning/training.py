"""Training one job: every model of its formulation, their predictions, the job's record.

:func:`train_job` is what ``python -m cxr_lightning.train`` runs for each job (the entry point,
:mod:`cxr_lightning.train`, wraps it with resume and failure handling). Everything a model is
built from comes from the config: ``model`` (the classifier, with ``model/optimizer`` and
``model/scheduler``), ``unfreeze``, ``callbacks``, ``trainer`` and ``logger``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cxr_lightning.callbacks.prefix_cache import PrefixCache
from cxr_lightning.callbacks.stage_best import StageBest
from cxr_lightning.callbacks.timing import EpochTimer
from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.data.cohort import cohort_summary
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.errors import UserError
from cxr_lightning.evaluation.metrics import THRESHOLD, known_labels, point_metrics
from cxr_lightning.evaluation.thresholds import YOUDEN
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import classifier_from_checkpoint, save_bundle
from cxr_lightning.integrity import verify_zip
from cxr_lightning.job_record import COHORT_FILE, MANIFEST_FILE, JobRecord
from cxr_lightning.models.backbones import build_backbone, calibrate_batchnorm, is_random_init
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import Formulation, FormulationPlan
from cxr_lightning.results import MemberResult, job_results, predictions_table, results_summary
from cxr_lightning.tracking import log_job_plots, log_job_summary, member_loggers

log = logging.getLogger(__name__)

BN_CALIBRATION_BATCHES = 20
UNFREEZE_REFERENCE = "unfreeze"
"""A ``callbacks`` entry's ``unfreezing: unfreeze``: it gets the job's unfreezing callback."""
REQUIRED_CALLBACKS: tuple[str, ...] = ("model_checkpoint", "epoch_timer", "stage_best")
"""``callbacks`` entries a job reads after training (conf/callbacks/default.yaml)."""


def build_classifier(cfg: DictConfig, member: Formulation) -> CXRClassifier:
    """The model of one formulation member from ``cfg.model`` (its ``_target_``, optimizer and
    scheduler), compiled when ``trainer.compile`` is set."""
    model = instantiate(cfg.model, formulation=member)
    if cfg.trainer.get("compile", False):  # a key of ours, not a Trainer argument
        model.compile_backbone()
    return model


def build_callbacks(cfg: DictConfig, unfreezing: ProgressiveUnfreezing,
                    record: JobRecord, name: str) -> dict[str, pl.Callback]:
    """Every ``callbacks`` entry of the config, built with what only the job knows: the model's
    checkpoint directory and, where the entry says ``unfreezing: unfreeze``, the unfreezing
    callback."""
    missing = [key for key in REQUIRED_CALLBACKS if cfg.callbacks.get(key) is None]
    if missing:
        raise UserError(f"callbacks.{missing[0]} is required (the job records what it "
                        "measures); remove the override that dropped it")
    checkpoint_dir = record.checkpoint_dir(name)
    runtime = {
        "model_checkpoint": {"dirpath": str(checkpoint_dir)},
        "stage_best": {"dirpath": str(checkpoint_dir / "stages") if cfg.stage_metrics else None},
    }
    return {key: instantiate(conf, **runtime.get(key, {}), **(
                {"unfreezing": unfreezing} if conf.get("unfreezing") == UNFREEZE_REFERENCE
                else {}))
            for key, conf in cfg.callbacks.items() if conf is not None}


def train_member(cfg: DictConfig, plan: FormulationPlan, member: Formulation,
                 datamodule: CXRDataModule, record: JobRecord
                 ) -> tuple[MemberResult, list[dict[str, Any]]] | None:
    """Fit one model with progressive unfreezing; predict test and val with its best weights.

    Returns the result and the per-stage records (:class:`StageBest`; with ``stage_metrics``,
    each stage's best checkpoint is tested too), or ``None`` on DDP ranks other than zero,
    which only train.
    """
    name = plan.member_name(member)
    # Each model starts from its own seed, whatever ran before it in this process (a resumed
    # binary job skips the first model's training).
    pl.seed_everything(cfg.seed + plan.members.index(member), workers=True)
    member.fit_to_training_labels(datamodule.train_labels())
    model = build_classifier(cfg, member)
    trainer_cfg = OmegaConf.masked_copy(cfg.trainer, [k for k in cfg.trainer if k != "compile"])
    unfreezing: ProgressiveUnfreezing = instantiate(cfg.unfreeze)
    callbacks = build_callbacks(cfg, unfreezing, record, name)
    checkpoint: pl.callbacks.ModelCheckpoint = callbacks["model_checkpoint"]
    timer: EpochTimer = callbacks["epoch_timer"]
    stages: StageBest = callbacks["stage_best"]
    prefix = "" if len(plan.members) == 1 else "-".join(member.findings)
    # after the unfreezing callback: it serves the stage that one begins
    prefix_cache = [PrefixCache(unfreezing)] if unfreezing.cache_frozen else []
    trainer: pl.Trainer = instantiate(
        trainer_cfg, callbacks=[unfreezing, *prefix_cache, *callbacks.values()],
        logger=member_loggers(cfg, record.directory, name, prefix))
    refuse_relaunch_in_multirun(trainer)
    resume_from = resume_checkpoint(cfg, record, name)
    log.info("Training %s (%s, findings %s)", name, cfg.model.backbone, member.findings)
    # Resumed: the calibrated statistics are BatchNorm buffers, restored from the checkpoint.
    if is_random_init(cfg.model.weights) and resume_from is None:
        calibration = islice(datamodule.train_dataloader(), BN_CALIBRATION_BATCHES)
        model.backbone.to(trainer.strategy.root_device)
        calibrate_batchnorm(model.backbone, (datamodule.on_after_batch_transfer(batch, 0)["image"]
                                             for batch in calibration))
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    if torch.distributed.is_initialized():  # DDP: the next fit starts its own process group
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return None
    # One device predicts, without the training callbacks (a checkpoint would restore them).
    predictor = pl.Trainer(accelerator=trainer.strategy.root_device.type, devices=1,
                           precision=cfg.trainer.precision, logger=False,
                           enable_checkpointing=False, enable_model_summary=False,
                           enable_progress_bar=False)
    probabilities = {split: predict_split(predictor, model, datamodule, split,
                                          checkpoint.best_model_path)
                     for split in ("test", "val")}
    result = MemberResult(
        name=name,
        findings=member.findings,
        epochs=trainer.current_epoch,
        epoch_times_s=list(timer.epoch_times_s),
        unfreeze_history=unfreezing.history,
        best_val_auroc_mean=float(checkpoint.best_model_score),
        best_checkpoint=checkpoint.best_model_path,
        precision=str(trainer.precision),
        device=trainer.strategy.root_device.type,
        throughput=list(timer.throughput),
        probabilities=probabilities,
    )
    for stage_record in stages.records:
        if stage_record["checkpoint"] is not None:  # stage_metrics: test each stage's best epoch
            stage = replace(result, probabilities={"test": predict_split(
                predictor, model, datamodule, "test", stage_record["checkpoint"])})
            stage_record["metrics"].update(stage_test_metrics(datamodule, stage))
    return result, stages.records


def resume_checkpoint(cfg: DictConfig, record: JobRecord, name: str) -> str | None:
    """With ``resume=true``, the model's ``last.ckpt`` to continue from, its checksums checked
    (a damaged one is a :class:`~cxr_lightning.errors.CorruptFileError` naming it); ``None``
    when not resuming or, with a warning naming it, when there is none."""
    if not cfg.resume:
        return None
    last = record.checkpoint_dir(name) / "last.ckpt"
    if not last.is_file():
        log.warning("resume=true: no %s; training %s from the beginning", last, name)
        return None
    verify_zip(last, f"delete it to train {name} again from the beginning with resume=true")
    log.info("Resuming %s from %s", name, last)
    return str(last)


def predict_split(predictor: pl.Trainer, model: CXRClassifier, datamodule: CXRDataModule,
                  split: str, checkpoint: str) -> list[torch.Tensor]:
    """Per-finding probabilities of one split with a checkpoint's weights. The predictor has no
    training callbacks on purpose (restoring them would rewind their state), so Lightning's
    warning that they are missing is silenced."""
    datamodule.predict_split = split
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
        return predictor.predict(model, datamodule=datamodule, ckpt_path=checkpoint)


def stage_test_metrics(datamodule: CXRDataModule, member: MemberResult) -> dict[str, float | None]:
    """``test/auroc/{f}`` and ``test/acc/{f}`` of one model's test probabilities (``None`` where
    undefined, e.g. AUROC with one class)."""
    table = predictions_table(datamodule.split_manifest("test"), [member], "test")
    metrics: dict[str, float | None] = {}
    for finding in member.findings:
        values = point_metrics(*known_labels(table, finding))
        for name in ("auroc", "acc"):
            metrics[f"test/{name}/{finding}"] = None if np.isnan(values[name]) else values[name]
    return metrics


def refuse_relaunch_in_multirun(trainer: pl.Trainer) -> None:
    """Lightning's DDP launcher re-runs the command line for each rank: inside a local Hydra
    multirun that would start the whole sweep again in every rank."""
    if (isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
            and not trainer.strategy.cluster_environment.creates_processes_externally
            and HydraConfig.get().mode == RunMode.MULTIRUN):
        raise MisconfigurationException(
            "trainer=ddp in a local multirun would relaunch the sweep in every rank: run the "
            "jobs one at a time (without -m), with hydra/launcher=slurm, or under torchrun")


def check_weights(cfg: DictConfig) -> None:
    """Build the backbone once with ``model.weights`` before any data is read (after the data
    root is checked), so that missing or unfitting weights (an absent file, no network for
    ImageNet's) end the launch at once."""
    try:
        build_backbone(cfg.model.backbone, cfg.model.weights, cfg.model.in_channels)
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(f"model.backbone={cfg.model.backbone} model.weights="
                        f"{cfg.model.weights}: {error}") from error


def train_job(cfg: DictConfig, record: JobRecord, overrides: list[str]) -> dict[str, Any] | None:
    """Train every model of the job's formulation; on rank zero, write and return results."""
    if cfg.data.get("sample") is not None:
        log.info("Running on the embedded MIMIC-CXR-format sample in %s (MIMIC-CXR itself: "
                 "data.root=... or MIMIC_CXR_ROOT)", cfg.data.root)
    datamodule: CXRDataModule = instantiate(cfg.data)
    datamodule.check_root()  # a mistyped data root first, the weights next: the order of fixes
    check_weights(cfg)  # before seeding: a random-init build draws from the global generator
    pl.seed_everything(cfg.seed, workers=True)
    datamodule.prepare_data()
    plan: FormulationPlan = instantiate(cfg.formulation.plan)
    trained = [train_member(cfg, plan, m, datamodule, record) for m in plan.members]
    if rank_zero_only.rank != 0:
        return None
    members = [member for member, _ in trained]
    # the job's cohort
    datamodule.manifest.to_csv(record.directory / MANIFEST_FILE, index=False)
    cohort_summary(datamodule.manifest, datamodule.cohort_report).to_csv(
        record.directory / COHORT_FILE)
    predictions, val_predictions = (
        predictions_table(datamodule.split_manifest(split), members, split)
        for split in ("test", "val"))
    results = job_results(cfg, plan.name, members, predictions, val_predictions,
                          datamodule.cohort_report)
    results["overrides"] = list(overrides)
    for member_record, (_, stages) in zip(results["members"], trained, strict=True):
        member_record["stages"] = stages
    save_model(record.model_path, cfg, plan, members, datamodule, results["thresholds"])
    path = record.write_results(results)  # last: its presence means the job completed
    log.info("%s: %s -> %s", results["formulation"], results_summary(results), path)
    log_job_summary(results["metrics"])
    log_job_plots(predictions, results["metrics"])
    return results


def save_model(path: Path, cfg: DictConfig, plan: FormulationPlan, members: list[MemberResult],
               datamodule: CXRDataModule, thresholds: dict[str, dict[str, float]]) -> None:
    """The job's trained result as one self-describing file (every model's best weights, the
    preprocessing, and the validation-chosen Youden thresholds for labels; 0.5 where a finding's
    validation split had one class), for ``python -m cxr_lightning.predict`` and ``export``."""
    save_bundle(
        path, plan=plan,
        models=[classifier_from_checkpoint(m.best_checkpoint, member)
                for m, member in zip(members, plan.members, strict=True)],
        preprocessing=datamodule.preprocessing,
        thresholds={f: thresholds[f].get(YOUDEN, THRESHOLD) for f in FINDINGS},
        threshold_record={"operating_point": YOUDEN, "rule": "probability > threshold",
                          "operating_points": thresholds},
        config=cfg)
