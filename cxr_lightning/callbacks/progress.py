"""The training progress bar: Lightning's tqdm bar without ``v_num``."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """:class:`TQDMProgressBar` without ``v_num`` (the logger's version: a W&B run id such as
    ``x866``, which says nothing about the training). Log lines written through
    :class:`cxr_lightning.console.TqdmStreamHandler` appear above it."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                    ) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
