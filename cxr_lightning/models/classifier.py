"""The LightningModule shared by every formulation: backbone + linear head, loss, metrics."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from cxr_lightning.findings import mean_of_defined
from cxr_lightning.models.backbones import build_backbone, suffix_forward, unfreezable_blocks
from cxr_lightning.models.description import CHECKPOINT_METADATA_KEY, checkpoint_description
from cxr_lightning.models.formulations import Formulation

log = logging.getLogger(__name__)


class CXRClassifier(pl.LightningModule):
    """A backbone with a fresh linear head, trained under one :class:`Formulation`.

    Batches are dicts with ``image`` (N, in_channels, H, W) and ``labels`` (N, 2) float in
    FINDINGS order (NaN where masked); while a frozen prefix's activations are cached
    (:class:`~cxr_lightning.callbacks.prefix_cache.PrefixCache`), training and validation
    batches hold ``activations`` at :attr:`prefix_boundary` instead, and only the rest runs.
    Validation logs ``val/auroc/{finding}``, ``val/acc/{finding}`` and ``val/auroc/mean``;
    :meth:`predict_step` returns the per-finding probabilities.
    """

    def __init__(
        self,
        formulation: Formulation,
        backbone: str = "resnet152",
        weights: str | None = "imagenet",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        in_channels: int = 3,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
    ) -> None:
        """``optimizer``: a factory called with the trainable parameters, ``lr`` and
        ``weight_decay`` (default AdamW; config ``model/optimizer``); ``scheduler``: a factory of
        an epoch-wise scheduler of that optimizer, or none (config ``model/scheduler``)."""
        super().__init__()
        self.save_hyperparameters(ignore=["formulation", "optimizer", "scheduler"])
        self.formulation = formulation
        self.optimizer_factory = optimizer or torch.optim.AdamW
        self.scheduler_factory = scheduler
        self.backbone, num_features = build_backbone(backbone, weights, in_channels)
        # channels-last throughout (cuDNN's and oneDNN's fast convolution layout), whatever
        # is frozen or folded
        self.backbone.to(memory_format=torch.channels_last)
        self.head = nn.Linear(num_features, formulation.num_outputs)
        self.val_auroc = nn.ModuleDict({f: BinaryAUROC() for f in formulation.findings})
        self.val_acc = nn.ModuleDict({f: BinaryAccuracy() for f in formulation.findings})
        self.val_positives = nn.ModuleDict({f: SumMetric() for f in formulation.findings})
        self.val_labelled = nn.ModuleDict({f: SumMetric() for f in formulation.findings})
        self._warned_undefined: set[str] = set()
        self.prefix_boundary: str | None = None  # set by callbacks.prefix_cache

    def compile_backbone(self, backend: str = "inductor") -> None:
        """Compile the backbone in place (``nn.Module.compile``: parameter names and the
        checkpoint are unchanged). :class:`ProgressiveUnfreezing` resets Dynamo's caches at each
        stage, so each stage compiles afresh instead of piling up recompilations."""
        self.backbone.compile(backend=backend, dynamic=False)

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compile_backbone` was called."""
        return getattr(self.backbone, "_compiled_call_impl", None) is not None

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        """The backbone's blocks, top-down, for :class:`ProgressiveUnfreezing`."""
        return unfreezable_blocks(self.backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, formulation.num_outputs)."""
        return self.head(self.backbone(images.contiguous(memory_format=torch.channels_last)))

    def batch_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a batch of images, or of the activations at :attr:`prefix_boundary`."""
        if "activations" in batch:
            return self.head(suffix_forward(self.backbone, self.prefix_boundary,
                                            batch["activations"]))
        return self(batch["image"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.formulation.loss(self.batch_logits(batch), batch["labels"])
        # not on the progress bar: it would turn the loss into a Python number (a host-device
        # sync) at every refresh
        self.log("train/loss", loss, on_step=True, on_epoch=True,
                 batch_size=len(batch["labels"]), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.batch_logits(batch)
        loss = self.formulation.loss(logits, batch["labels"])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]),
                 sync_dist=True)
        probabilities = self.formulation.finding_probabilities(logits)
        labels = batch["labels"][:, self.formulation.finding_columns]
        for column, finding in enumerate(self.formulation.findings):
            known = ~torch.isnan(labels[:, column])
            target = labels[known, column].long()
            self.val_auroc[finding].update(probabilities[known, column], target)
            self.val_acc[finding].update(probabilities[known, column], target)
            self.val_positives[finding].update(target.sum())
            self.val_labelled[finding].update(known.sum())

    def on_validation_epoch_end(self) -> None:
        """Log each finding's AUROC (NaN when the validation split holds one class of it) and
        ``val/auroc/mean``, the mean of the defined ones, warning once per undefined finding."""
        aurocs = {}
        for finding in self.formulation.findings:
            positives = int(self.val_positives[finding].compute())
            labelled = int(self.val_labelled[finding].compute())
            aurocs[finding] = (float(self.val_auroc[finding].compute())
                               if 0 < positives < labelled else float("nan"))
            self.log(f"val/auroc/{finding}", aurocs[finding])
            self.log(f"val/acc/{finding}", self.val_acc[finding].compute())
            for metric in (self.val_auroc, self.val_acc, self.val_positives, self.val_labelled):
                metric[finding].reset()
        mean, undefined = mean_of_defined(aurocs)
        for finding in sorted(set(undefined) - self._warned_undefined):
            log.warning("val/auroc/%s is undefined (the validation split holds one class of "
                        "%s); val/auroc/mean is the mean of the other findings' AUROCs (NaN "
                        "when none is defined)", finding, finding)
            self._warned_undefined.add(finding)
        self.log("val/auroc/mean", mean, prog_bar=True)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Per-finding probabilities (N, len(formulation.findings))."""
        return self.formulation.finding_probabilities(self(batch["image"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint self-describing: formulation, findings, backbone, the trainer's
        datamodule ``preprocessing`` (when it has one) and the code version, under
        ``checkpoint["cxr_lightning"]`` (see :mod:`cxr_lightning.models.description`)."""
        preprocessing = getattr(getattr(self.trainer, "datamodule", None), "preprocessing", None)
        checkpoint[CHECKPOINT_METADATA_KEY] = checkpoint_description(self.formulation,
                                                                     self.hparams, preprocessing)

    def on_fit_start(self) -> None:
        """cuDNN autotuning on CUDA (the batch shape is fixed), unless the trainer is
        deterministic."""
        if self.device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        """The configured optimizer (AdamW by default) over the trainable parameters, with its
        fused kernel on CUDA, else the multi-tensor (``foreach``) one where it has them; the
        scheduler, when configured, stepped once per epoch."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(
            trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
            **kernel_options(self.optimizer_factory, self.device.type))
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                 "interval": "epoch"}}


def kernel_options(factory: Callable[..., Optimizer], device_type: str) -> dict[str, bool]:
    """``fused=True`` on CUDA, else ``foreach=True``, where the optimizer class accepts it and
    the config did not choose already."""
    if {"fused", "foreach"} & set(getattr(factory, "keywords", {})):
        return {}
    accepted = inspect.signature(getattr(factory, "func", factory)).parameters
    for option in (("fused",) if device_type == "cuda" else ()) + ("foreach",):
        if option in accepted:
            return {option: True}
    return {}
