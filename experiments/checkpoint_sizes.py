"""Disk use of a job's checkpoints per backbone and ``checkpoints.keep`` policy.

Each model is a :class:`CXRClassifier` (random init; the size does not depend on the weights)
fitted for one optimizer step on random 32 px images through a Lightning ``Trainer`` with the
study's unfreezing callback (``conf/unfreeze/study.yaml``, ``restore_best`` keeps a copy of the
trainable weights in the checkpoint), so that the checkpoint holds what a real one holds: the
weights, the AdamW state of the trainable parameters and the callbacks' state. Two points of a
run are measured: the first stage (head only) and the last (the study's three conv5 blocks).

``best.ckpt`` is the best epoch's (any stage: at most the last stage's size), ``last.ckpt``
the last epoch's (the last stage); ``all`` keeps one per epoch (40 at most,
``trainer.max_epochs``). A stage that is not the last also keeps a copy of its trainable
weights for ``restore_best``, which the head-only stage makes negligible. ``model.pt``
(every model's best weights) is written under every policy. binary trains two models per job,
multilabel and multiclass one: the head width (1, 2 or 4 outputs) changes the size by a few kB.
Usage::

    python experiments/checkpoint_sizes.py [--backbones resnet18 resnet50 resnet152 densenet121]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation

log = logging.getLogger(__name__)

STUDY_UNFREEZE = Path(__file__).resolve().parents[1] / "conf" / "unfreeze" / "study.yaml"
STUDY_BLOCKS = 3  # the study's last stage: layer4.2, layer4.1, layer4.0 (3 blocks elsewhere)
MAX_EPOCHS = 40  # trainer.max_epochs: checkpoints.keep=all keeps at most this many


def batches(n: int = 4, size: int = 32) -> list[dict[str, torch.Tensor]]:
    """One batch of random images with both classes of each finding."""
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])[:n]
    return [{"image": torch.randn(n, 3, size, size), "labels": labels}]


def checkpoint_mb(backbone: str, blocks: int, directory: Path) -> float:
    """MB of the Lightning checkpoint after one step with ``blocks`` backbone blocks trainable."""
    unfreeze = OmegaConf.load(STUDY_UNFREEZE)
    unfreeze.last_stage_epochs = None
    unfreeze.until = None
    unfreeze.schedule = [[0, blocks]] if blocks else None
    unfreeze.interval = None  # without a schedule: the head alone trains
    model = CXRClassifier(MultilabelFormulation(), backbone=backbone, weights="none")
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=directory, filename=f"{backbone}-{blocks}",
                                              monitor="val/auroc/mean", mode="max")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[instantiate(unfreeze), checkpoint])
    loader = DataLoader(batches(), batch_size=None)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    return Path(checkpoint.best_model_path).stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["resnet18", "resnet50", "resnet152", "densenet121"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    log.info("| backbone | checkpoint, head-only stage | checkpoint, last stage | best | "
          "best+last (default) | all (40 epochs) | best+last, 4 models (binary+multilabel+"
          "multiclass) |")
    log.info("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        for backbone in args.backbones:
            head, last = (checkpoint_mb(backbone, blocks, Path(directory))
                          for blocks in (0, STUDY_BLOCKS))
            log.info(f"| {backbone} | {head:.0f} MB | {last:.0f} MB | <= {last:.0f} MB | "
                  f"<= {2 * last:.0f} MB | <= {MAX_EPOCHS * last / 1e3:.1f} GB | "
                  f"<= {8 * last / 1e3:.1f} GB |")

if __name__ == "__main__":
    main()
