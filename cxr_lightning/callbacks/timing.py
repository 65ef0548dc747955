"""EpochTimer: wall-clock time of every training epoch, logged and kept for results.json."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class EpochTimer(pl.Callback):
    """Records each training epoch's wall time, end-of-epoch validation included."""

    def __init__(self) -> None:
        self.epoch_times_s: list[float] = []
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        self.epoch_times_s.append(elapsed)
        pl_module.log("train/epoch_time_s", elapsed, on_epoch=True)

    def state_dict(self) -> dict:
        return {"epoch_times_s": list(self.epoch_times_s)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_times_s = list(state_dict["epoch_times_s"])
