"""The stages of progressive unfreezing as a plain value: which blocks unfreeze at which epoch.

:class:`UnfreezeSchedule` holds the configuration (interval form or explicit steps, caps) and
:meth:`UnfreezeSchedule.resolve` turns it, given a model's block names top-down, into
``[(nominal start epoch, blocks unfrozen)]`` per stage. No Trainer, no module: the callback
(:class:`~cxr_lightning.callbacks.unfreeze.ProgressiveUnfreezing`) holds one and asks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Schedule = Sequence[tuple[int, int | str | Sequence[str]]]
"""``[(epoch, blocks)]``: a count of blocks, ``"all"`` or block names, unfrozen at ``epoch``."""

Step = tuple[int, int | str | tuple[str, ...]]


@dataclass(frozen=True)
class UnfreezeSchedule:
    """Stages from one of two forms:

    * interval form (``steps=None``): every ``interval`` epochs the next ``blocks_per_step``
      blocks unfreeze (``interval=None``: never);
    * explicit form: ``steps`` lists ``(epoch, blocks)`` with strictly increasing epochs;
      ``blocks`` is a count of the next blocks top-down, their names (the next blocks, in any
      order) or ``"all"`` (every remaining block). ``interval`` and ``blocks_per_step`` are then
      ignored.

    ``max_blocks`` and ``until`` (the last block to unfreeze) cap either form; a step beyond the
    cap is dropped. ``last_stage_epochs``: how long the last stage lasts (``None``: until the
    run ends otherwise).
    """

    interval: int | None = 10
    blocks_per_step: int = 1
    max_blocks: int | None = None
    until: str | None = None
    steps: tuple[Step, ...] | None = field(default=None)
    last_stage_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.interval is not None and self.interval < 1:
            raise ValueError(f"interval must be >= 1 or None, got {self.interval}")
        if self.max_blocks is not None and self.max_blocks < 0:
            raise ValueError(f"max_blocks must be >= 0 or None, got {self.max_blocks}")
        if self.blocks_per_step < 1:
            raise ValueError(f"blocks_per_step must be >= 1, got {self.blocks_per_step}")
        if self.last_stage_epochs is not None and self.last_stage_epochs < 1:
            raise ValueError(
                f"last_stage_epochs must be >= 1 or None, got {self.last_stage_epochs}")
        if self.steps is not None:
            object.__setattr__(self, "steps", _normalise(self.steps))

    def resolve(self, names: Sequence[str]) -> list[tuple[int, int]]:
        """``[(nominal start epoch, blocks unfrozen)]`` per stage, stage 0 (head only) first,
        for a model whose blocks top-down are ``names``."""
        names = list(names)
        limit = len(names) if self.max_blocks is None else min(self.max_blocks, len(names))
        if self.until is not None:
            if self.until not in names:
                raise ValueError(f"until={self.until!r} is not a block; valid: {names}")
            limit = min(limit, names.index(self.until) + 1)
        steps: Sequence[Step] | None = self.steps
        if steps is None and self.interval is None:
            steps = []
        elif steps is None:
            starts = range(0, len(names), self.blocks_per_step)
            steps = [(self.interval * (k + 1), min(self.blocks_per_step, len(names) - start))
                     for k, start in enumerate(starts)]
        stages, requested = [(0, 0)], 0
        for epoch, blocks in steps:
            requested += _step_size(epoch, blocks, names[requested:])
            if min(requested, limit) > stages[-1][1]:
                stages.append((epoch, min(requested, limit)))
        return stages

    def longest(self, stages: list[tuple[int, int]]) -> int:
        """The most epochs ``stages`` (from :meth:`resolve`) can take: the last stage's start
        plus its length (one epoch when it has none)."""
        return stages[-1][0] + (self.last_stage_epochs or 1)


def _normalise(schedule: Schedule) -> tuple[Step, ...]:
    """Plain ``((epoch, count | "all" | (names...)), ...)`` from YAML lists; checks what needs
    no model."""
    steps: list[Step] = []
    for epoch, blocks in schedule:
        if not isinstance(blocks, int | str):
            blocks = tuple(str(name) for name in blocks)
        if isinstance(blocks, str):
            valid = blocks == "all"
        else:
            valid = blocks >= 1 if isinstance(blocks, int) else bool(blocks)
        if not valid:
            shown = list(blocks) if isinstance(blocks, tuple) else blocks
            raise ValueError(f"schedule step at epoch {epoch}: blocks must be a count >= 1, "
                             f"'all' or a list of block names, got {shown!r}")
        if epoch < 0 or (steps and epoch <= steps[-1][0]):
            raise ValueError(f"schedule epochs must be >= 0 and increasing, got {epoch} after "
                             f"{[e for e, _ in steps]}")
        steps.append((int(epoch), blocks))
    return tuple(steps)


def _step_size(epoch: int, blocks: int | str | tuple[str, ...], remaining: list[str]) -> int:
    """How many of the ``remaining`` blocks (top-down) a schedule step unfreezes."""
    if blocks == "all":
        return len(remaining)
    count = blocks if isinstance(blocks, int) else len(blocks)
    if count > len(remaining):
        raise ValueError(f"schedule step at epoch {epoch} unfreezes {count} blocks, only "
                         f"{len(remaining)} remain: {remaining}")
    if isinstance(blocks, tuple) and sorted(blocks) != sorted(remaining[:count]):
        raise ValueError(f"schedule step at epoch {epoch} names {list(blocks)}; the next "
                         f"blocks top-down are {remaining[:count]}")
    return count
