"""EarlyStopping that waits for progressive unfreezing to reach its last stage."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing


class StagedEarlyStopping(EarlyStopping):
    """``EarlyStopping`` whose checks begin once ``unfreezing`` is ``finished`` (its last stage
    has begun); the config names the callback it follows (``unfreezing: unfreeze`` in
    ``conf/callbacks/default.yaml``: the job passes its ``unfreeze`` callback).

    While stages remain the metric is not read at all, so the best score and the patience count
    start at the last stage's first validation: the last setting gets its own early stopping.
    An unfreezing callback with a plateau trigger (``monitor``) ends every stage itself, the last
    one (the run) included, so this one then stays out of the way. Without ``unfreezing`` it is
    a plain ``EarlyStopping``.
    """

    def __init__(self, unfreezing: ProgressiveUnfreezing | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unfreezing = unfreezing

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at the end of the training epoch, once the last stage has begun."""
        if not self._unfreezing_decides():
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at the end of validation, once the last stage has begun."""
        if not self._unfreezing_decides():
            super().on_validation_end(trainer, pl_module)

    def _unfreezing_decides(self) -> bool:
        """Whether ``unfreezing`` has stages still to begin or ends its stages (and so the run)
        by its own plateau trigger."""
        return self.unfreezing is not None and (not self.unfreezing.finished
                                                or self.unfreezing.monitor is not None)
