"""Train, test and record one formulation per job: ``python -m cxr_lightning.train``.

``python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass`` runs the three
formulations as a Hydra multirun and ends with a comparison table. Without MIMIC-CXR configured
(``data.root=...`` or the environment variable ``MIMIC_CXR_ROOT``) the ``preset=sample`` overlay
is selected: the embedded MIMIC-CXR-format sample with a small, fast model. Otherwise the base
config is the study's: ResNet152 at 512x512, ImageNet weights.

Every job writes ``config_resolved.yaml`` first, then ``results.json`` when it completes, or
``failed.json`` (the error and its traceback) when it fails: a failed job is recorded and the
rest of the sweep goes on. With ``resume=true``, a job whose ``results.json`` is complete is
skipped. Under DDP every rank trains; rank zero alone predicts and writes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import traceback
import warnings
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import hydra
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

from cxr_lightning import preset, resolvers  # noqa: F401  (registers the config's resolvers)
from cxr_lightning.callbacks.resume_state import ResumeState
from cxr_lightning.callbacks.stage_best import StageBest
from cxr_lightning.callbacks.timing import EpochTimer
from cxr_lightning.data.cohort import cohort_summary
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.errors import EXIT_USER_ERROR, UserError, debugging
from cxr_lightning.evaluation.metrics import THRESHOLD, known_labels, point_metrics
from cxr_lightning.evaluation.thresholds import YOUDEN
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import classifier_from_checkpoint, save_bundle
from cxr_lightning.models.backbones import build_backbone, calibrate_batchnorm, is_random_init
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import Formulation, FormulationPlan
from cxr_lightning.results import MemberResult, job_results, predictions_table, write_results
from cxr_lightning.tracking import (
    finish_tracking,
    log_job_plots,
    log_job_summary,
    member_loggers,
)

log = logging.getLogger(__name__)

BN_CALIBRATION_BATCHES = 20
# What a job directory holds before its job starts (Hydra's record, the log, the resolved config).
JOB_START_FILES = {".hydra", "config_resolved.yaml", "train.log", "wandb"}
# The configuration: conf/ beside the package in a checkout, cxr_lightning/conf in an install.
PROJECT_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_PATH = (str(PROJECT_CONF_DIR) if (PROJECT_CONF_DIR / "train.yaml").is_file()
               else "pkg://cxr_lightning.conf")


def train_member(cfg: DictConfig, plan: FormulationPlan, member: Formulation,
                 datamodule: CXRDataModule, output_dir: Path
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
    model = CXRClassifier(member, **cfg.model)
    if cfg.trainer.get("compile", False):  # a key of ours, not a Trainer argument
        model.compile_backbone()
    trainer_cfg = OmegaConf.masked_copy(cfg.trainer, [k for k in cfg.trainer if k != "compile"])
    timer = EpochTimer()
    checkpoint_dir = output_dir / "checkpoints" / name
    unfreezing = instantiate(cfg.unfreeze)
    callbacks = [unfreezing, timer, ResumeState(),
                 *(instantiate(c) for c in cfg.callbacks.values())]
    checkpoint = next(c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint))
    checkpoint.dirpath = str(checkpoint_dir)
    stages = StageBest(unfreezing, monitor=checkpoint.monitor, mode=checkpoint.mode,
                       dirpath=checkpoint_dir / "stages" if cfg.stage_metrics else None)
    callbacks.append(stages)
    prefix = "" if len(plan.members) == 1 else "-".join(member.findings)
    trainer: pl.Trainer = instantiate(
        trainer_cfg, callbacks=callbacks, logger=member_loggers(cfg, output_dir, name, prefix))
    refuse_relaunch_in_multirun(trainer)
    last = checkpoint_dir / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.is_file() else None
    if resume_from:
        log.info("Resuming %s from %s", name, resume_from)
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
                           enable_checkpointing=False, enable_model_summary=False)
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
    for record in stages.records:
        if record["checkpoint"] is not None:  # stage_metrics: test each stage's best epoch
            stage = replace(result, probabilities={"test": predict_split(
                predictor, model, datamodule, "test", record["checkpoint"])})
            record["metrics"].update(stage_test_metrics(datamodule, stage))
    return result, stages.records


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


def job_overrides() -> list[str]:
    """The job's command-line overrides that define it (``resume`` only says how it runs)."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]


def completed_results(output_dir: Path) -> dict[str, Any] | None:
    """The job's results.json when it is complete (written atomically), else ``None``."""
    path = output_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RuntimeError(f"{path} is not valid JSON ({error}): delete it to re-run the "
                           "job") from error
    return results if {"metrics", "overrides"} <= set(results) else None


def optimized_value(cfg: DictConfig, results: dict[str, Any]) -> float:
    """The metric the sweeper optimises, ``optimized_metric``, from a job's results."""
    metrics = results["metrics"]
    if cfg.optimized_metric not in metrics:
        raise KeyError(f"optimized_metric={cfg.optimized_metric!r} is not among the job's "
                       f"metrics: {sorted(k for k in metrics if '/' in k)[:20]}...")
    value = metrics[cfg.optimized_metric]
    if value is None or not math.isfinite(value):
        log.warning("optimized_metric=%s is undefined for this job (e.g. every finding's "
                    "validation split holds one class); the job returns NaN, which a sweeper "
                    "records as a failed trial", cfg.optimized_metric)
        return math.nan
    return float(value)


def run_job(cfg: DictConfig) -> float:
    """One job: data, every model of the formulation, test metrics, results.json. Returns the
    job's ``optimized_metric``. A failure is recorded in failed.json; in a multirun the job then
    returns NaN (Optuna marks the trial failed) and the sweep goes on, a single run re-raises."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    overrides = job_overrides()
    done = completed_results(output_dir) if cfg.resume else None
    if done is not None:
        if done["overrides"] != overrides:
            raise ValueError(f"resume=true: {output_dir} holds the results of overrides "
                             f"{done['overrides']}, not {overrides}; re-run the sweep with the "
                             "same arguments or in a new directory")
        log.info("resume=true: %s is complete (results.json); skipping it", output_dir)
        return optimized_value(cfg, done)
    if rank_zero_only.rank == 0:
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (output_dir / "failed.json").unlink(missing_ok=True)
    try:
        check_weights(cfg)
        results = train_and_test(cfg, output_dir)
    except UserError as error:  # every job of the launch would fail alike: it ends here
        if debugging():
            raise
        log.error("%s", error)
        finish_tracking(failed=True)
        remove_litter(output_dir)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as error:  # a failed job is recorded; the sweep goes on
        if rank_zero_only.rank != 0:
            raise
        log.exception("Job %s failed", output_dir)
        (output_dir / "failed.json").write_text(json.dumps({
            "overrides": overrides, "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()}, indent=2))
        finish_tracking(failed=True)
        if HydraConfig.get().mode == RunMode.RUN:
            raise
        return float("nan")
    finish_tracking()
    if results is None:  # a DDP rank other than zero
        return float("nan")
    log.info("Job %s holds %.1f MB (checkpoints.keep=%s)", output_dir,
             disk_use(output_dir) / 1e6, cfg.checkpoints.keep)
    return optimized_value(cfg, results)


def disk_use(directory: Path) -> int:
    """Bytes of the files under ``directory``."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def check_weights(cfg: DictConfig) -> None:
    """Build the backbone once with ``model.weights`` before any data is read, so that missing
    or unfitting weights (an absent file, no network for ImageNet's) end the launch at once."""
    try:
        build_backbone(cfg.model.backbone, cfg.model.weights, cfg.model.in_channels)
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(f"model.backbone={cfg.model.backbone} model.weights="
                        f"{cfg.model.weights}: {error}") from error


def remove_litter(output_dir: Path) -> None:
    """Delete a job directory that holds nothing but what its start wrote (and, in a multirun,
    a sweep directory left empty by that): a launch refused for a user error leaves no trace."""
    if rank_zero_only.rank != 0 or {p.name for p in output_dir.iterdir()} - JOB_START_FILES:
        return
    shutil.rmtree(output_dir)
    sweep_dir = output_dir.parent
    if (HydraConfig.get().mode == RunMode.MULTIRUN
            and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}):
        shutil.rmtree(sweep_dir)


def train_and_test(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """Train every model of the job's formulation; on rank zero, write and return results."""
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.data.get("sample") is not None:
        log.info("Running on the embedded MIMIC-CXR-format sample in %s (MIMIC-CXR itself: "
                 "data.root=... or MIMIC_CXR_ROOT)", cfg.data.root)
    datamodule: CXRDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    plan: FormulationPlan = instantiate(cfg.formulation.plan)
    trained = [train_member(cfg, plan, m, datamodule, output_dir) for m in plan.members]
    if rank_zero_only.rank != 0:
        return None
    members = [member for member, _ in trained]
    datamodule.manifest.to_csv(output_dir / "manifest.csv", index=False)  # the job's cohort
    cohort_summary(datamodule.manifest, datamodule.cohort_report).to_csv(output_dir / "cohort.csv")
    predictions, val_predictions = (
        predictions_table(datamodule.split_manifest(split), members, split)
        for split in ("test", "val"))
    results = job_results(cfg, plan.name, members, predictions, val_predictions,
                          datamodule.cohort_report)
    results["overrides"] = job_overrides()
    for record, (_, stages) in zip(results["members"], trained, strict=True):
        record["stages"] = stages
    save_model(output_dir / "model.pt", cfg, plan, members, datamodule, results["thresholds"])
    write_results(output_dir, results)  # last: its presence means the job completed
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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra entry point (one job of a run or multirun)."""
    return run_job(cfg)


def main() -> None:
    """The command: Hydra, with ``preset=auto`` reading the command line (:mod:`preset`)."""
    preset.use_command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
