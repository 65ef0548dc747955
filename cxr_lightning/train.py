"""Train, test and record one formulation per job: ``python -m cxr_lightning.train``.

``python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass`` runs the three
formulations as a Hydra multirun and ends with a comparison table. Without MIMIC-CXR configured
(``data.root=...`` or the environment variable ``MIMIC_CXR_ROOT``) the ``preset=sample`` overlay
is selected: the embedded MIMIC-CXR-format sample with a small, fast model. Otherwise the base
config is the study's: ResNet152 at 512x512, ImageNet weights.
"""

from __future__ import annotations

import logging
import os
import sys
from itertools import islice
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from cxr_lightning.callbacks.timing import EpochTimer
from cxr_lightning.data.cohort import cohort_summary
from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.models.backbones import calibrate_batchnorm, is_random_init
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import Formulation, FormulationPlan
from cxr_lightning.results import MemberResult, job_results, predictions_table, write_results
from cxr_lightning.tracking import finish_tracking, log_job_summary, member_loggers

log = logging.getLogger(__name__)

BN_CALIBRATION_BATCHES = 20
PROJECT_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def train_member(cfg: DictConfig, plan: FormulationPlan, member: Formulation,
                 datamodule: CXRDataModule, output_dir: Path) -> MemberResult:
    """Fit one model with progressive unfreezing; predict test and val with its best weights."""
    name = plan.member_name(member)
    member.fit_to_training_labels(datamodule.train_labels())
    model = CXRClassifier(member, **cfg.model)
    timer = EpochTimer()
    checkpoint_dir = output_dir / "checkpoints" / name
    unfreezing = instantiate(cfg.unfreeze)
    callbacks = [unfreezing, timer, *(instantiate(c) for c in cfg.callbacks.values())]
    checkpoint = next(c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint))
    checkpoint.dirpath = str(checkpoint_dir)
    prefix = "" if len(plan.members) == 1 else "-".join(member.findings)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=member_loggers(cfg, output_dir, name, prefix))
    last = checkpoint_dir / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.is_file() else None
    if resume_from:
        log.info("Resuming %s from %s", name, resume_from)
    log.info("Training %s (%s, findings %s)", name, cfg.model.backbone, member.findings)
    if is_random_init(cfg.model.weights) and resume_from is None:
        calibration = islice(datamodule.train_dataloader(), BN_CALIBRATION_BATCHES)
        model.backbone.to(trainer.strategy.root_device)
        calibrate_batchnorm(model.backbone, (datamodule.on_after_batch_transfer(batch, 0)["image"]
                                             for batch in calibration))
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    # read before predict(): loading the best checkpoint restores the callbacks' earlier state
    epochs, epoch_times_s = trainer.current_epoch, list(timer.epoch_times_s)
    unfreeze_history = unfreezing.history
    probabilities = {}
    for split in ("test", "val"):
        datamodule.predict_split = split
        probabilities[split] = trainer.predict(model, datamodule=datamodule, ckpt_path="best")
    return MemberResult(
        name=name,
        findings=member.findings,
        epochs=epochs,
        epoch_times_s=epoch_times_s,
        unfreeze_history=unfreeze_history,
        best_val_auroc_mean=float(checkpoint.best_model_score),
        best_checkpoint=checkpoint.best_model_path,
        probabilities=probabilities,
    )


def run_job(cfg: DictConfig) -> float:
    """One job: data, every model of the formulation, test metrics, results.json. Returns the
    mean of the models' best ``val/auroc/mean`` (the sweep's optimisation metric)."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.data.get("sample") is not None:
        log.info("MIMIC-CXR is not configured (data.root / MIMIC_CXR_ROOT): running on the "
                 "embedded MIMIC-CXR-format sample in %s", cfg.data.root)
    datamodule: CXRDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.manifest.to_csv(output_dir / "manifest.csv", index=False)  # the job's cohort
    cohort_summary(datamodule.manifest, datamodule.cohort_report).to_csv(output_dir / "cohort.csv")
    plan: FormulationPlan = instantiate(cfg.formulation.plan)
    try:
        members = [train_member(cfg, plan, m, datamodule, output_dir) for m in plan.members]
        predictions, val_predictions = (
            predictions_table(datamodule.split_manifest(split), members, split)
            for split in ("test", "val"))
        results = job_results(cfg, plan.name, members, predictions, val_predictions,
                              datamodule.cohort_report)
        write_results(output_dir, results)
        log_job_summary(results["metrics"])
    finally:
        finish_tracking()
    return sum(m.best_val_auroc_mean for m in members) / len(members)


@hydra.main(version_base="1.3", config_path=str(PROJECT_CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra entry point (one job of a run or multirun)."""
    return run_job(cfg)


def mimic_configured(overrides: list[str]) -> bool:
    """Whether the command line or environment points at a dataset (else: the embedded sample)."""
    chosen = ("data.root=", "data=", "preset=", "+preset=")
    return bool(os.environ.get("MIMIC_CXR_ROOT")) or any(o.startswith(chosen) for o in overrides)


def main() -> None:
    """Select ``preset=sample`` when no dataset is configured, then run Hydra."""
    if not mimic_configured(sys.argv[1:]):
        sys.argv.append("preset=sample")
    hydra_main()


if __name__ == "__main__":
    main()
