"""StageBest: each unfreezing stage's best validation epoch, and optionally its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing


class StageBest(pl.Callback):
    """Record, per stage of ``unfreezing``, the epoch where ``monitor`` was best and every
    ``val/`` metric at that epoch; with ``dirpath``, also save that epoch's weights as
    ``dirpath/stage{k}.ckpt`` (so each stage can be tested afterwards: experiment I). These are
    weights-only checkpoints, half the size of a full one: resuming uses ``last.ckpt``.

    :attr:`records` holds one dict per stage begun: ``stage``, ``start_epoch``, ``blocks`` (the
    names it unfroze), ``epochs`` (validated so far), ``best_epoch``, ``metrics`` and
    ``checkpoint`` (a path, or ``None`` without ``dirpath``). The records are checkpointed, so a
    resumed run continues them.
    """

    def __init__(self, unfreezing: ProgressiveUnfreezing, monitor: str = "val/auroc/mean",
                 mode: str = "max", dirpath: str | Path | None = None) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.unfreezing = unfreezing
        self.monitor = monitor
        self.mode = mode
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.records: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        """The records so far."""
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the records of a resumed run."""
        self.records = [dict(r) for r in state_dict["records"]]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Update the current stage's record; save its checkpoint when the epoch is its best."""
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise MisconfigurationException(
                f"StageBest monitors {self.monitor!r}, which was not logged; available: "
                f"{sorted(trainer.callback_metrics)}")
        stage = self.unfreezing.stage
        if not self.records or self.records[-1]["stage"] != stage:
            began = self.unfreezing.history[stage]
            self.records.append({"stage": stage, "start_epoch": began["epoch"],
                                 "blocks": began["blocks"], "epochs": 0, "best_epoch": None,
                                 "metrics": {}, "checkpoint": None})
        record = self.records[-1]
        record["epochs"] += 1
        value = float(value)
        best = record["metrics"].get(self.monitor)
        if best is None or (value > best if self.mode == "max" else value < best):
            record["best_epoch"] = trainer.current_epoch
            record["metrics"] = {key: float(metric) for key, metric
                                 in trainer.callback_metrics.items()
                                 if key.startswith("val/") and metric.numel() == 1}
            if self.dirpath is not None:
                path = self.dirpath / f"stage{stage}.ckpt"
                trainer.save_checkpoint(path, weights_only=True)
                record["checkpoint"] = str(path)
