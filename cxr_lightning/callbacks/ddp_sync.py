"""Keep DDP's gradient all-reduce over exactly the parameters that train, stage after stage.

``DistributedDataParallel`` builds its reducer once, when Lightning wraps the module, over the
parameters that require grad then. Progressive unfreezing freezes the backbone before that
wrap and unfreezes blocks later (a new stage, or a resumed run re-unfreezing its blocks), so
without help those blocks' gradients would never be all-reduced and every rank would train its
own copy of them. :class:`TrainableSync` rewraps the module through the strategy's own
``configure_ddp`` whenever the set of trainable parameters differs from the one the current
wrapper was built with. A rewrap broadcasts rank zero's weights and buffers (DDP's constructor
does) and builds a fresh reducer over every parameter that now requires grad; the frozen prefix
keeps running without gradients and frozen BatchNorm stays folded. Outside DDP it does nothing
but one ``isinstance`` check per stage change (docs/design.md: "DDP and unfreezing").
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)


def trainable_ids(module: pl.LightningModule) -> frozenset[int]:
    """The ``id`` of every parameter of ``module`` that requires grad."""
    return frozenset(id(p) for p in module.parameters() if p.requires_grad)


class TrainableSync:
    """Rewraps a DDP-wrapped module when its trainable parameters change.

    :meth:`track` records what the strategy's wrapper was built with (call it before changing
    ``requires_grad`` after the wrap); :meth:`update` rewraps if the trainable set differs.
    """

    def __init__(self) -> None:
        self._wrapped: frozenset[int] | None = None
        self.rewraps = 0

    def track(self, trainer: pl.Trainer) -> None:
        """Record the trainable set the strategy's current DDP wrapper was built with."""
        if _ddp_strategy(trainer) is not None:
            self._wrapped = trainable_ids(trainer.lightning_module)

    def update(self, trainer: pl.Trainer) -> bool:
        """Rewrap when the trainable parameters differ from the wrapper's; return whether it
        did."""
        strategy = _ddp_strategy(trainer)
        if strategy is None:
            return False
        trainable = trainable_ids(trainer.lightning_module)
        if trainable == self._wrapped:
            return False
        # the old wrapper's reducer (and its autograd hooks) goes with the last reference to it
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
        self._wrapped = trainable
        self.rewraps += 1
        _info("DDP rewrapped: %d trainable parameter tensors are all-reduced",
              len(trainable))
        return True


def _ddp_strategy(trainer: pl.Trainer) -> DDPStrategy | None:
    """The trainer's DDP strategy when it holds a DDP-wrapped module, else ``None``."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model,
                                                         DistributedDataParallel):
        return strategy
    return None
