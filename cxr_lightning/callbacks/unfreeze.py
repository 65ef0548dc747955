"""ProgressiveUnfreezing: train the head first, then unfreeze the backbone block by block.

Contract with the LightningModule:

* ``pl_module.backbone`` is an ``nn.Module`` (the trunk), and
  ``pl_module.unfreezable_blocks()`` returns ``[(name, module), ...]`` top-down (the block to
  unfreeze first comes first), e.g. :func:`cxr_lightning.models.backbones.unfreezable_blocks`.
* ``configure_optimizers`` returns exactly one optimizer built from the parameters with
  ``requires_grad`` only (the callback freezes the backbone in ``setup``, before
  ``configure_optimizers`` runs); its first param group is the head's.
* A block unfrozen at epoch ``e`` becomes a new param group whose lr is
  ``lr_factor * optimizer.param_groups[0]["lr"]`` read at that moment (the head's *current*,
  possibly scheduled, lr) and whose ``initial_lr`` is ``lr_factor`` times the head's
  ``initial_lr``. Schedulers of that optimizer get an entry for the new group (``base_lrs``,
  ``lr_lambdas``, ``min_lrs``), so LambdaLR / StepLR / CosineAnnealingLR / ReduceLROnPlateau keep
  the block's lr at ``lr_factor`` times the head's. OneCycleLR and CyclicLR are not supported.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer


class ProgressiveUnfreezing(BaseFinetuning):
    """Unfreeze one backbone block, top-down, at the start of every ``interval``-th epoch.

    Stage 0 trains the head only; at epoch ``k * interval`` (k = 1, 2, ...) block ``k`` of
    ``pl_module.unfreezable_blocks()`` is unfrozen, until ``max_blocks`` blocks (``None``: all)
    are. Frozen blocks keep their weights and, unless ``train_bn``, their BatchNorm layers in
    eval mode (running statistics untouched, normalisation with them). With ``train_bn=True``
    frozen BatchNorm layers train, as in Lightning's ``BaseFinetuning.freeze``: their affine
    parameters require grad from the start, so ``configure_optimizers`` puts them in the head's
    param group, where they stay once their block is unfrozen.

    Logs ``unfreeze/stage`` and ``unfreeze/trainable_params`` every epoch.
    """

    def __init__(
        self,
        interval: int = 10,
        max_blocks: int | None = None,
        lr_factor: float = 1.0,
        train_bn: bool = False,
    ) -> None:
        super().__init__()
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if max_blocks is not None and max_blocks < 0:
            raise ValueError(f"max_blocks must be >= 0 or None, got {max_blocks}")
        if lr_factor <= 0:
            raise ValueError(f"lr_factor must be > 0, got {lr_factor}")
        self.interval = interval
        self.max_blocks = max_blocks
        self.lr_factor = lr_factor
        self.train_bn = train_bn
        self._blocks: list[tuple[str, nn.Module]] = []
        self._unfrozen: list[str] = []
        self._frozen_bns: list[_BatchNorm] = []

    @property
    def stage(self) -> int:
        """The number of unfrozen blocks (0: head only)."""
        return len(self._unfrozen)

    @property
    def unfrozen_block_names(self) -> list[str]:
        """Names of the unfrozen blocks, in unfreezing order."""
        return list(self._unfrozen)

    def state_dict(self) -> dict[str, Any]:
        """BaseFinetuning's optimizer metadata plus the unfrozen block names."""
        return {**super().state_dict(), "unfrozen_block_names": list(self._unfrozen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the stage; the blocks are made trainable again in ``on_fit_start``."""
        self._unfrozen = list(state_dict.get("unfrozen_block_names", []))
        super().load_state_dict(state_dict)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Freeze the backbone before ``configure_optimizers`` (fitting only)."""
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze the whole backbone; the head stays trainable (stage 0)."""
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module) or not callable(
            getattr(pl_module, "unfreezable_blocks", None)
        ):
            raise MisconfigurationException(
                "ProgressiveUnfreezing needs a LightningModule with an nn.Module `backbone` "
                "and a method `unfreezable_blocks()` returning [(name, module), ...] top-down"
            )
        self._blocks = list(pl_module.unfreezable_blocks())
        self._unfrozen = []
        self.freeze(pl_module.backbone, train_bn=self.train_bn)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the optimizer; on resume, re-unfreeze the restored blocks and param groups."""
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                "ProgressiveUnfreezing supports exactly one optimizer, "
                f"got {len(trainer.optimizers)}"
            )
        if self._restarting:
            names = [name for name, _ in self._blocks[: self.stage]]
            if names != self._unfrozen:
                raise MisconfigurationException(
                    f"Checkpoint unfroze blocks {self._unfrozen}, but the model's first blocks "
                    f"are {names}"
                )
            for _, block in self._blocks[: self.stage]:
                self.make_trainable(block)
        super().on_fit_start(trainer, pl_module)
        optimizer = trainer.optimizers[0]
        in_optimizer = _param_ids(optimizer)
        frozen_in_optimizer = [
            name
            for name, param in pl_module.named_parameters()
            if not param.requires_grad and id(param) in in_optimizer
        ]
        if frozen_in_optimizer:
            raise MisconfigurationException(
                "configure_optimizers must only pass parameters with requires_grad=True "
                f"(frozen ones found: {frozen_in_optimizer[:3]}...)"
            )
        self._extend_schedulers(trainer, optimizer)
        self._collect_frozen_bns(pl_module)

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """Unfreeze blocks until ``min(epoch // interval, max_blocks)`` are unfrozen."""
        limit = len(self._blocks) if self.max_blocks is None else self.max_blocks
        limit = min(limit, len(self._blocks))
        target = min(epoch // self.interval, limit)
        while self.stage < target:
            name, block = self._blocks[self.stage]
            group = self._add_block(block, optimizer, name)
            self._unfrozen.append(name)
            rank_zero_info(
                f"Epoch {epoch}: unfroze backbone block {name} ({len(group['params'])} tensors, "
                f"lr {group['lr']:.3g}); stage {self.stage}/{limit}"
            )
        self._collect_frozen_bns(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Unfreeze the epoch's block (BaseFinetuning) and log the stage."""
        super().on_train_epoch_start(trainer, pl_module)
        self._extend_schedulers(trainer, trainer.optimizers[0])
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        pl_module.log("unfreeze/stage", float(self.stage), on_step=False, on_epoch=True)
        pl_module.log(
            "unfreeze/trainable_params", float(trainable), on_step=False, on_epoch=True
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Put frozen BatchNorm layers in eval mode, whatever ``.train()`` calls came before."""
        for bn in self._frozen_bns:
            bn.train(False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the module back with every layer in train mode, as Lightning expects."""
        for bn in self._frozen_bns:
            bn.train(True)

    def _add_block(self, block: nn.Module, optimizer: Optimizer, name: str) -> dict[str, Any]:
        """Make ``block`` trainable and add its new parameters as a param group.

        Like ``BaseFinetuning.unfreeze_and_add_param_group`` but parameters already in the
        optimizer are recognised by identity: Lightning compares values (``torch.equal``), which
        drops e.g. a fresh BatchNorm's ones/zeros when an equal tensor is already there.
        """
        self.make_trainable(block)
        head = optimizer.param_groups[0]
        in_optimizer = _param_ids(optimizer)
        group = {
            "params": [p for p in block.parameters() if id(p) not in in_optimizer],
            "lr": head["lr"] * self.lr_factor,
            "initial_lr": head.get("initial_lr", head["lr"]) * self.lr_factor,
            "name": f"backbone.{name}",
        }
        if group["params"]:
            optimizer.add_param_group(group)
        return group

    @staticmethod
    def _extend_schedulers(trainer: pl.Trainer, optimizer: Optimizer) -> None:
        """Give the optimizer's schedulers a per-group entry for every added param group."""
        groups = optimizer.param_groups
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if scheduler.optimizer is not optimizer:
                continue
            base_lrs = getattr(scheduler, "base_lrs", None)
            if isinstance(base_lrs, list):
                base_lrs.extend(g.get("initial_lr", g["lr"]) for g in groups[len(base_lrs):])
            for attribute in ("lr_lambdas", "min_lrs"):
                values = getattr(scheduler, attribute, None)
                if isinstance(values, list) and values:
                    values.extend(values[0] for _ in groups[len(values):])

    def _collect_frozen_bns(self, pl_module: pl.LightningModule) -> None:
        """The BatchNorm layers to keep in eval mode: those of the still-frozen backbone."""
        if self.train_bn:
            self._frozen_bns = []
            return
        unfrozen = {
            id(module)
            for _, block in self._blocks[: self.stage]
            for module in block.modules()
        }
        self._frozen_bns = [
            module
            for module in pl_module.backbone.modules()
            if isinstance(module, _BatchNorm) and id(module) not in unfrozen
        ]


def _param_ids(optimizer: Optimizer) -> set[int]:
    """The ``id`` of every parameter in ``optimizer``'s param groups."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}
