"""The obvious ranges of a composed training config, checked once when a job starts.

A value out of its range (``data.batch_size=0``, ``unfreeze.interval=0``, a negative
``model.lr``, ``trainer.max_epochs=0``) would otherwise end in a traceback, or late, after the
data are built. :func:`check_ranges` raises a :class:`~cxr_lightning.errors.BadValueError`
naming the key, its value, the range and an override that fixes it: one line, exit status 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from cxr_lightning.errors import BadValueError

_ABSENT = object()


@dataclass(frozen=True)
class Range:
    """``key`` must hold a number ``>= minimum`` (``> minimum`` when ``strict``), an integer
    when ``integer``; ``also`` lists other accepted values; a null value is accepted when
    ``optional`` (the key is then unused, e.g. ``unfreeze.interval`` under a schedule)."""

    key: str
    minimum: float
    example: str
    integer: bool = True
    strict: bool = False
    optional: bool = False
    also: tuple[int, ...] = ()

    def describe(self) -> str:
        """The range in words, e.g. ``an integer >= 1``."""
        kind = "an integer" if self.integer else "a number"
        bound = f"{'>' if self.strict else '>='} {self.minimum:g}"
        extra = "".join(f" or {value}" for value in self.also)
        return f"{kind} {bound}{extra}{' or null' if self.optional else ''}"

    def accepts(self, value: object) -> bool:
        """Whether ``value`` lies in the range."""
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if value in self.also:
            return True
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return value > self.minimum if self.strict else value >= self.minimum


RANGES: tuple[Range, ...] = (
    Range("data.batch_size", 1, "data.batch_size=16"),
    Range("data.num_workers", 0, "data.num_workers=4"),
    Range("data.image_size", 1, "data.image_size=512"),
    Range("model.lr", 0, "model.lr=1e-4", integer=False, strict=True),
    Range("model.weight_decay", 0, "model.weight_decay=1e-4", integer=False),
    Range("trainer.max_epochs", 1, "trainer.max_epochs=40", also=(-1,)),
    Range("unfreeze.interval", 1, "unfreeze.interval=10", optional=True),
    Range("unfreeze.patience", 1, "unfreeze.patience=3", optional=True),
)
"""What :func:`check_ranges` checks; a key the config lacks is skipped."""


def check_ranges(cfg: DictConfig) -> None:
    """Raise a one-line user error for the first key of :data:`RANGES` out of its range."""
    for rule in RANGES:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is not _ABSENT and not rule.accepts(value):
            raise BadValueError(f"{rule.key}={value}: expected {rule.describe()}, "
                                f"e.g. {rule.example}")
