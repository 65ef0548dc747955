"""Test helper: a callback that SIGKILLs its own training process at a given optimizer step.

Used through the real CLI (``+callbacks.kill._target_=kill_switch.KillAtStep
+callbacks.kill.step=N`` with ``tests/`` on ``PYTHONPATH``): the process dies as it would under
``kill -9`` or an out-of-memory killer, without exception handlers, ``finally`` blocks or
Lightning's teardown.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILL at the end of optimizer step ``step``, before this step's checkpoint and log
    row (checkpoint callbacks run after the others)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
