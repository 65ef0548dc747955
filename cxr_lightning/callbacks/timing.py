"""EpochTimer: wall-clock time and throughput of every training epoch, logged and kept for
results.json."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing


class EpochTimer(pl.Callback):
    """Records each training epoch's wall time (end-of-epoch validation included) and its
    throughput (:attr:`throughput`, one record per epoch):

    * ``stage``: the unfreezing stage the epoch trained in (``None`` without unfreezing);
    * ``train_images`` / ``train_s`` / ``train_img_s``: from the epoch's start to its last
      training batch's end;
    * ``data_wait_s`` / ``data_wait_fraction``: the time between one batch's end and the next
      one's start (fetching, collating, copying to the device), and its share of ``train_s``;
    * ``val_images`` / ``val_s`` / ``val_img_s``: the epoch's validation;
    * ``peak_memory_gb``: the largest CUDA memory allocated during the epoch (``None`` on CPU).

    Times are the host's: on a GPU a batch's end is when its kernels were queued, so time the
    device spends behind the host shows up in the next wait for data only when the data path,
    not the device, is the bottleneck. Logged as ``perf/train_img_s``, ``perf/val_img_s`` and
    ``perf/data_wait_fraction``.
    """

    def __init__(self) -> None:
        self.epoch_times_s: list[float] = []
        self.throughput: list[dict[str, Any]] = []
        self._started: float | None = None
        self._current: dict[str, Any] = {}
        self._last_end = 0.0
        self._val_started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last_end = time.perf_counter()
        self._current = {"epoch": trainer.current_epoch, "stage": _stage(trainer),
                         "train_images": 0, "train_s": 0.0, "data_wait_s": 0.0,
                         "val_images": 0, "val_s": 0.0}
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._started is not None:
            self._current["data_wait_s"] += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._started is None:
            return
        self._last_end = time.perf_counter()
        self._current["train_images"] += len(batch["labels"])
        self._current["train_s"] = self._last_end - self._started

    def on_validation_epoch_start(self, trainer: pl.Trainer,
                                  pl_module: pl.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._started is not None and not trainer.sanity_checking:
            self._current["val_images"] += len(batch["labels"])

    def on_validation_epoch_end(self, trainer: pl.Trainer,
                                pl_module: pl.LightningModule) -> None:
        if self._started is not None and not trainer.sanity_checking:
            self._current["val_s"] += time.perf_counter() - self._val_started

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        self.epoch_times_s.append(elapsed)
        pl_module.log("train/epoch_time_s", elapsed, on_epoch=True, sync_dist=True)
        record = self._current
        record["train_img_s"] = _rate(record["train_images"], record["train_s"])
        record["val_img_s"] = _rate(record["val_images"], record["val_s"])
        record["data_wait_fraction"] = (record["data_wait_s"] / record["train_s"]
                                        if record["train_s"] > 0 else None)
        record["peak_memory_gb"] = (torch.cuda.max_memory_allocated(pl_module.device) / 2**30
                                    if pl_module.device.type == "cuda" else None)
        self.throughput.append(record)
        for key in ("train_img_s", "val_img_s", "data_wait_fraction"):
            if record[key] is not None:
                pl_module.log(f"perf/{key}", float(record[key]), on_epoch=True, sync_dist=True)

    def state_dict(self) -> dict:
        return {"epoch_times_s": list(self.epoch_times_s),
                "throughput": [dict(r) for r in self.throughput]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_times_s = list(state_dict["epoch_times_s"])
        self.throughput = [dict(r) for r in state_dict.get("throughput", [])]


def _stage(trainer: pl.Trainer) -> int | None:
    """The unfreezing stage in progress (``None`` without a ProgressiveUnfreezing callback)."""
    return next((c.stage for c in trainer.callbacks if isinstance(c, ProgressiveUnfreezing)),
                None)


def _rate(images: int, seconds: float) -> float | None:
    return images / seconds if seconds > 0 and images else None
