"""A quiet console: third-party noise filtered at its source, log lines that leave progress bars
whole, and one summary line for a warning that would otherwise repeat per item.

Every command calls :func:`quiet_console` once logging is configured (``train``: once per job,
after Hydra has configured the job's logging). What is filtered, and why nobody can act on it:

* ``_pytree`` deprecation: Lightning's own code calls a torch API that torch deprecates;
* Lightning's ``💡 Tip`` (an advertisement for its cloud logger), ``GPU available``/``TPU
  available`` (the device used is in the job's log and results.json), ``Seed set to`` (the seed
  is in the config) and, for the predictions made with a checkpoint, ``Restoring states``/
  ``Loaded model weights`` (the checkpoint is named in results.json).

Lightning's messages then go through the root logger like every other (Hydra's format, the
job's ``train.log``), and console handlers write through ``tqdm.write``, so a line logged while a
bar is drawn appears above it instead of inside it.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

DEPRECATIONS_OUT_OF_REACH = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
"""Warning messages (regexes from the start) that third-party code raises about itself."""

LIGHTNING_CHATTER = re.compile(
    r"💡 Tip: |[GT]PU available: |Seed set to \d|Restoring states from the checkpoint path "
    r"|Loaded model weights from the checkpoint ")
"""Lightning's info lines that say nothing the user can act on (module doc)."""

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch",
                     "lightning.fabric")
CHATTY_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                  "lightning_fabric.utilities.seed")
"""Where Lightning's info lines are made (a logger's filter sees its own records only)."""


class MessageFilter(logging.Filter):
    """Drops records whose message matches ``pattern`` (``re.match``)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


class TqdmStreamHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: open bars are cleared, the line is
    written, and the bars are drawn again below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001  (logging's own contract: report, never raise)
            self.handleError(record)


def quiet_console() -> None:
    """Filter the noise of the module doc and make console logging progress-bar aware.
    Idempotent; call it after logging is configured."""
    for message in DEPRECATIONS_OUT_OF_REACH:
        warnings.filterwarnings("ignore", message=message)
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MessageFilter) for f in logger.filters):
            logger.addFilter(MessageFilter(LIGHTNING_CHATTER))
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in LIGHTNING_LOGGERS:  # their own stderr handler, added when imported first
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
            root.removeHandler(handler)
            root.addHandler(_tqdm_aware(handler))


def _tqdm_aware(handler: logging.StreamHandler) -> TqdmStreamHandler:
    """A :class:`TqdmStreamHandler` with ``handler``'s stream, level, format and filters."""
    replacement = TqdmStreamHandler(handler.stream)
    replacement.setLevel(handler.level)
    replacement.setFormatter(handler.formatter)
    for item in handler.filters:
        replacement.addFilter(item)
    return replacement


@contextmanager
def summarised(logger_name: str, pattern: str, summary: str,
               examples: int = 3) -> Iterator[list[str]]:
    """Within the block, the records of ``logger_name`` whose message matches ``pattern``
    (``re.search``) are counted instead of shown; at the end, if there were any, that logger
    warns once with ``summary.format(count=..., examples=...)`` (``examples``: the first
    messages, ``; ``-joined). Yields the list of the counted messages."""
    counted: list[str] = []
    regex = re.compile(pattern)

    def count(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if regex.search(message) is None:
            return True
        counted.append(message)
        return False

    logger = logging.getLogger(logger_name)
    logger.addFilter(count)
    try:
        yield counted
    finally:
        logger.removeFilter(count)
        if counted:
            logger.warning(summary.format(count=len(counted),
                                          examples="; ".join(counted[:examples])))
