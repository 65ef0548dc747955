"""EarlyStopping that waits for progressive unfreezing to reach its last stage."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing


class StagedEarlyStopping(EarlyStopping):
    """``EarlyStopping`` whose checks begin once every ``ProgressiveUnfreezing`` among the
    trainer's callbacks is ``finished`` (its last stage has begun).

    While stages remain the metric is not read at all, so the best score and the patience count
    start at the last stage's first validation: the last setting gets its own early stopping.
    An unfreezing callback with a plateau trigger (``monitor``) ends every stage itself, the last
    one (the run) included, so this one then stays out of the way. Without an unfreezing
    callback it is a plain ``EarlyStopping``.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at the end of the training epoch, once the last stage has begun."""
        if not _unfreezing_decides(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at the end of validation, once the last stage has begun."""
        if not _unfreezing_decides(trainer):
            super().on_validation_end(trainer, pl_module)


def _unfreezing_decides(trainer: pl.Trainer) -> bool:
    """Whether a ``ProgressiveUnfreezing`` callback of ``trainer`` has stages still to begin or
    ends its stages (and so the run) by its own plateau trigger."""
    return any(
        isinstance(callback, ProgressiveUnfreezing)
        and (not callback.finished or callback.monitor is not None)
        for callback in trainer.callbacks
    )
