"""Test helper: what each DDP rank holds at every epoch's end, and a planned failure.

Used through the real CLI (``+callbacks.probe._target_=rank_probe.RankProbe
+callbacks.probe.out=DIR`` with ``tests/helpers`` on ``PYTHONPATH``) by ``tests/e2e/test_ddp.py``
and ``make gpu-check``; :func:`rank_differences` compares what the ranks wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class RankProbe(pl.Callback):
    """Writes ``rank{r}_{findings}_epoch{e}.json`` at every training epoch's end: the training
    samples' dataset indices, the validation AUROCs, each block's weights summed in float64
    (the head and ``unfreezable_blocks()``) and which blocks train."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.seen: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.seen.extend(batch["index"].tolist())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        blocks = [("head", pl_module.head), *pl_module.unfreezable_blocks()]
        model = "-".join(pl_module.formulation.findings)
        name = f"rank{trainer.global_rank}_{model}_epoch{trainer.current_epoch}.json"
        (self.out / name).write_text(json.dumps({
            "world_size": trainer.world_size, "train_indices": self.seen,
            "val": {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("val/auroc")},
            "sums": {n: sum(p.detach().double().sum().item() for p in b.parameters())
                     for n, b in blocks},
            "trainable": [n for n, b in blocks if any(p.requires_grad for p in b.parameters())],
        }))


class FailAtStep(pl.Callback):
    """Raise on every rank at the end of optimizer step ``step`` (a crash every rank sees)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("planned failure")


def rank_differences(probes: Path) -> tuple[int, dict[str, list[str]]]:
    """How many (model, epoch) probes rank 0 wrote, and per probe the blocks (or ``trainable``)
    where another rank differs from rank 0 or wrote nothing."""
    compared, different = 0, {}
    for first in sorted(probes.glob("rank0_*.json")):
        compared += 1
        reference = json.loads(first.read_text())
        for rank in range(1, reference["world_size"]):
            other = probes / first.name.replace("rank0_", f"rank{rank}_", 1)
            if not other.is_file():
                different[other.stem] = ["missing"]
                continue
            probe = json.loads(other.read_text())
            blocks = [n for n in reference["sums"] if reference["sums"][n] != probe["sums"][n]]
            if reference["trainable"] != probe["trainable"]:
                blocks.append("trainable")
            if blocks:
                different[other.stem] = blocks
    return compared, different
