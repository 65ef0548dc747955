"""Test helper: a callback that holds its training process at the first batch until a file
exists, so a test can act while a job is certainly running.

Used through the real CLI (``+callbacks.hold._target_=hold.HoldUntil +callbacks.hold.path=P``
with ``tests/helpers`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class HoldUntil(pl.Callback):
    """Wait at the first training batch until ``path`` exists (at most ``timeout`` seconds)."""

    def __init__(self, path: str, timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
