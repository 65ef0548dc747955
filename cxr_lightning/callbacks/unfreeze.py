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
  the block's lr at ``lr_factor`` times the head's. OneCycleLR and CyclicLR are rejected.
* Resuming from a checkpoint restores the stage, the trainable blocks, the param groups and
  the plateau trigger exactly. Lightning itself does not replay a ReduceLROnPlateau step that
  came after the epoch-end checkpoint (PR #14702), so only that scheduler may differ.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from cxr_lightning.callbacks.bn_folding import FrozenBatchNorms
from cxr_lightning.callbacks.ddp_sync import TrainableSync
from cxr_lightning.callbacks.unfreeze_schedule import Schedule, UnfreezeSchedule

log = logging.getLogger(__name__)
_info = rank_zero_only(log.info)  # stage changes, through the job's log (rank zero only)

UNSUPPORTED_SCHEDULERS = (OneCycleLR, CyclicLR)
"""Schedulers that store per-group state at construction, which groups added later lack."""


class ProgressiveUnfreezing(BaseFinetuning):
    """Unfreeze backbone blocks top-down in stages: stage 0 trains the head only.

    The stages are a plain value, :class:`~cxr_lightning.callbacks.unfreeze_schedule.
    UnfreezeSchedule` (:attr:`plan`), built from ``interval``, ``blocks_per_step``,
    ``max_blocks``, ``until``, ``schedule`` (explicit ``(epoch, blocks)`` steps;
    ``[(0, "all")]`` trains everything from the start) and ``last_stage_epochs``, and resolved
    on ``pl_module.unfreezable_blocks()``. Each stage lasts its nominal length (the gap
    between its step's epoch and the next one's); the last stage lasts ``last_stage_epochs``
    epochs, after which the run stops (``None``: until the run ends otherwise). With ``monitor``
    and ``patience``, a stage whose validation metric has not improved (``mode``) for
    ``patience`` validations ends early: the next stage starts at the next epoch, and every
    later stage keeps its length; a plateau in the last stage ends the run. So ``interval=10,
    last_stage_epochs=10, patience=3`` are the study's settings: each at most 10 epochs, with
    early stopping.

    With ``restore_best`` (needs ``monitor``), each stage starts from the weights of the
    previous stage's best validation, as early stopping with restored weights does: the head
    and the unfrozen blocks (all weights with ``train_bn``) are kept in memory (on the CPU) at
    each improvement and in the checkpointed state, and loaded back when the next stage begins.

    Frozen blocks keep their weights and, unless ``train_bn``, their BatchNorm layers in eval
    mode, folded into the convolution before them with ``fold_frozen_bn`` (default):
    :class:`~cxr_lightning.callbacks.bn_folding.FrozenBatchNorms`. Under DDP the module is
    rewrapped whenever its trainable parameters change
    (:class:`~cxr_lightning.callbacks.ddp_sync.TrainableSync`), so every rank trains one model.
    With ``train_bn=True`` frozen BatchNorm layers train, as in Lightning's
    ``BaseFinetuning.freeze``: their affine parameters require grad from the start, so
    ``configure_optimizers`` puts them in the head's param group, where they stay once their
    block is unfrozen.

    Logs ``unfreeze/stage``, ``unfreeze/blocks`` (unfrozen block count) and
    ``unfreeze/trainable_params`` every epoch, and the names of the blocks each stage unfreezes
    (the log, and a W&B table ``unfreeze/stages`` of stage, start epoch and blocks);
    :attr:`history` (also in the checkpointed state) records every stage's start epoch and blocks.
    """

    def __init__(
        self,
        interval: int | None = 10,
        max_blocks: int | None = None,
        lr_factor: float = 1.0,
        train_bn: bool = False,
        blocks_per_step: int = 1,
        until: str | None = None,
        schedule: Schedule | None = None,
        monitor: str | None = None,
        patience: int | None = None,
        mode: str = "max",
        fold_frozen_bn: bool = True,
        last_stage_epochs: int | None = None,
        restore_best: bool = False,
        cache_frozen: bool = False,
    ) -> None:
        """``cache_frozen``: a job also runs :class:`~cxr_lightning.callbacks.prefix_cache.
        PrefixCache` (the frozen prefix's activations computed once; read by the job only)."""
        super().__init__()
        self.plan = UnfreezeSchedule(interval=interval, blocks_per_step=blocks_per_step,
                                     max_blocks=max_blocks, until=until,
                                     steps=None if schedule is None else tuple(schedule),
                                     last_stage_epochs=last_stage_epochs)
        if lr_factor <= 0:
            raise ValueError(f"lr_factor must be > 0, got {lr_factor}")
        if (monitor is None) != (patience is None) or (patience is not None and patience < 1):
            raise ValueError(
                f"monitor and patience (>= 1) go together, got {monitor=} {patience=}"
            )
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if restore_best and monitor is None:
            raise ValueError("restore_best needs monitor (and patience): the best weights of a "
                             "stage are those of its best value of the monitored metric")
        self.lr_factor = lr_factor
        self.train_bn = train_bn
        self.monitor = monitor
        self.patience = patience
        self.mode = mode
        self.fold_frozen_bn = fold_frozen_bn
        self.restore_best = restore_best
        self.cache_frozen = cache_frozen
        self._best_state: dict[str, torch.Tensor] | None = None
        self._frozen_bn = FrozenBatchNorms(fold=fold_frozen_bn)
        self._blocks: list[tuple[str, nn.Module]] = []
        self._stages: list[tuple[int, int]] = [(0, 0)]  # (nominal start epoch, blocks unfrozen)
        self._history: list[dict[str, Any]] = [{"epoch": 0, "blocks": []}]
        self._best: float | None = None
        self._wait = 0
        self._advance = False
        self._logged_stage: int | None = None
        self._ddp = TrainableSync()

    @property
    def stage(self) -> int:
        """The current stage (0: head only)."""
        return len(self._history) - 1

    @property
    def finished(self) -> bool:
        """Whether the last stage has begun (no block will unfreeze any more)."""
        return self.stage == len(self._stages) - 1

    @property
    def unfrozen_block_names(self) -> list[str]:
        """Names of the unfrozen blocks, in unfreezing order."""
        return [name for entry in self._history for name in entry["blocks"]]

    @property
    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The model's unfreezable blocks ``[(name, module)]`` top-down, as resolved at the
        start of fitting (read-only; empty before)."""
        return list(self._blocks)

    @property
    def last_stage_epochs(self) -> int | None:
        """How long the last stage lasts (``None``: until the run ends otherwise)."""
        return self.plan.last_stage_epochs

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per stage begun so far: ``{"epoch": start epoch, "blocks": names it unfroze}``."""
        return [{"epoch": e["epoch"], "blocks": list(e["blocks"])} for e in self._history]

    def state_dict(self) -> dict[str, Any]:
        """BaseFinetuning's optimizer metadata plus the stage history and the plateau state."""
        return {
            **super().state_dict(),
            "unfrozen_block_names": self.unfrozen_block_names,
            "history": self.history,
            "plateau": {"best": self._best, "wait": self._wait, "advance": self._advance},
            "best_state": self._best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the stage; the blocks are made trainable again in ``on_fit_start``."""
        self._history = [dict(entry) for entry in state_dict["history"]]
        plateau = state_dict["plateau"]
        self._best, self._wait, self._advance = plateau["best"], plateau["wait"], plateau["advance"]
        self._best_state = state_dict.get("best_state")
        super().load_state_dict(state_dict)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Freeze the backbone before ``configure_optimizers`` (fitting only)."""
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Resolve the stages on the module's blocks; freeze the whole backbone (stage 0)."""
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module) or not callable(
            getattr(pl_module, "unfreezable_blocks", None)
        ):
            raise MisconfigurationException(
                "ProgressiveUnfreezing needs a LightningModule with an nn.Module `backbone` "
                "and a method `unfreezable_blocks()` returning [(name, module), ...] top-down"
            )
        self._blocks = list(pl_module.unfreezable_blocks())
        self._stages = self.plan.resolve([name for name, _ in self._blocks])
        self._history = [{"epoch": 0, "blocks": []}]
        self._reset_plateau()
        self.freeze(pl_module.backbone, train_bn=self.train_bn)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the optimizer; on resume, re-unfreeze the restored blocks and param groups."""
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                "ProgressiveUnfreezing supports exactly one optimizer, "
                f"got {len(trainer.optimizers)}"
            )
        self._ddp.track(trainer)
        # resolved again: the strategy may have swapped modules since setup (SyncBatchNorm)
        self._blocks = list(pl_module.unfreezable_blocks())
        if self._restarting:
            unfrozen = self.unfrozen_block_names
            names = [name for name, _ in self._blocks[: len(unfrozen)]]
            if names != unfrozen or self.stage >= len(self._stages):
                raise MisconfigurationException(
                    f"Checkpoint unfroze blocks {unfrozen} in {self.stage} stages, but the "
                    f"model's first blocks are {names} and the schedule has "
                    f"{len(self._stages) - 1} stages"
                )
            for _, block in self._blocks[: len(unfrozen)]:
                self.make_trainable(block)
                block.train()
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
        unsupported = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs
                       if isinstance(c.scheduler, UNSUPPORTED_SCHEDULERS)]
        if unsupported:
            raise MisconfigurationException(
                f"ProgressiveUnfreezing cannot add param groups under {unsupported[0]}: it sets "
                "per-group momentum/lr bounds only for the groups that exist when it is built. "
                "Use LambdaLR, StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR or "
                "ReduceLROnPlateau")
        self._extend_schedulers(trainer, optimizer)
        self._check_max_epochs(trainer)
        if self.fold_frozen_bn and _compiled(pl_module):
            _info("BatchNorm folding is off under a compiled backbone: the compiler "
                           "fuses eval-mode BatchNorm itself")
            self.fold_frozen_bn = False
        self._frozen_bn.fold = self.fold_frozen_bn
        self._update_frozen_bn(pl_module)
        self._ddp.update(trainer)

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """Begin every stage that is due at ``epoch``: its nominal start, or a plateau."""
        while not self.finished and (
            self._advance
            or epoch - self._history[-1]["epoch"]
            >= self._stages[self.stage + 1][0] - self._stages[self.stage][0]
        ):
            self._begin_next_stage(pl_module, epoch, optimizer)
        self._update_frozen_bn(pl_module)

    def plateaued(self, value: float) -> bool:
        """Record a validation value of ``monitor`` for the current stage; return whether it has
        not improved for ``patience`` values (the stage then ends after this epoch)."""
        self._record(value)
        return self._advance

    def _record(self, value: float) -> bool:
        """Feed the plateau trigger one value; return whether it improved on the stage's best."""
        improved = self._best is None or (value > self._best if self.mode == "max"
                                          else value < self._best)
        if improved:
            self._best, self._wait = value, 0
        else:
            self._wait += 1
        self._advance = self._advance or self._wait >= self.patience
        return improved

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Begin the epoch's stage (BaseFinetuning) and log it."""
        super().on_train_epoch_start(trainer, pl_module)
        self._ddp.update(trainer)
        self._extend_schedulers(trainer, trainer.optimizers[0])
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        for key, value in (
            ("stage", self.stage),
            ("blocks", len(self.unfrozen_block_names)),
            ("trainable_params", trainable),
        ):
            pl_module.log(f"unfreeze/{key}", float(value), on_step=False, on_epoch=True)
        if self.stage != self._logged_stage:
            self._logged_stage = self.stage
            rows = [[stage, entry["epoch"], ", ".join(entry["blocks"])]
                    for stage, entry in enumerate(self._history)]
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table("unfreeze/stages", columns=["stage", "epoch", "blocks"],
                                     data=rows)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Feed ``monitor`` to the plateau trigger (keeping the stage's best weights with
        ``restore_best``); a plateau ends the stage, and in the last stage the run."""
        if (self.monitor is None or trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking):
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise MisconfigurationException(
                f"ProgressiveUnfreezing monitors {self.monitor!r}, which was not logged; "
                f"available: {sorted(trainer.callback_metrics)}"
            )
        if self._record(float(value)) and self.restore_best and not self.finished:
            self._best_state = self._trainable_state(pl_module)
        if not self._advance:
            return
        if self.finished:
            trainer.should_stop = True
            _info(f"Epoch {trainer.current_epoch}: {self.monitor} has not improved for "
                           f"{self._wait} validations; the last unfreezing stage ends the run")
        else:
            _info(
                f"Epoch {trainer.current_epoch}: {self.monitor} has not improved for "
                f"{self._wait} validations; unfreezing stage {self.stage + 1} begins next epoch"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the run when the last stage has lasted ``last_stage_epochs`` epochs."""
        if (self.finished and self.last_stage_epochs is not None and
                trainer.current_epoch + 1 - self._history[-1]["epoch"] >= self.last_stage_epochs):
            trainer.should_stop = True
            _info(f"Epoch {trainer.current_epoch}: the last unfreezing stage has run its "
                           f"{self.last_stage_epochs} epochs; the run ends")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Put frozen BatchNorm layers in eval mode, whatever ``.train()`` calls came before."""
        self._frozen_bn.hold_eval()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the module back as it came: BatchNorm unfolded, every layer in train mode."""
        self._frozen_bn.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        """Unfold BatchNorm, so a failed fit leaves the module unchanged."""
        self._frozen_bn.unfold()

    def _check_max_epochs(self, trainer: pl.Trainer) -> None:
        """Warn when ``max_epochs`` would cut the schedule short of its last stage's length."""
        longest = self.plan.longest(self._stages)
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs < longest:
            rank_zero_warn(f"trainer.max_epochs={trainer.max_epochs} may end the run before the "
                           f"unfreezing schedule does: its last stage starts at epoch "
                           f"{self._stages[-1][0]} at the latest (up to {longest} epochs)")

    def _trainable_state(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """A CPU copy of what the current stage trains: the module's state without the
        still-frozen backbone (everything with ``train_bn``, whose frozen BatchNorm trains)."""
        unfrozen = self._blocks[: len(self.unfrozen_block_names)]
        keep = {id(t) for _, block in unfrozen for t in (*block.parameters(), *block.buffers())}
        frozen = {id(t) for t in (*pl_module.backbone.parameters(),
                                  *pl_module.backbone.buffers())} - keep
        return {key: tensor.detach().to("cpu", copy=True)
                for key, tensor in pl_module.state_dict(keep_vars=True).items()
                if self.train_bn or id(tensor) not in frozen}

    def _begin_next_stage(self, pl_module: pl.LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        """Restore the stage's best weights (``restore_best``), unfreeze the next stage's blocks
        (one param group each) and reset the plateau."""
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state, strict=False)
            _info(f"Epoch {epoch}: stage {self.stage} ends; restored the weights of its "
                           f"best {self.monitor} ({self._best:.4g})")
            self._best_state = None
        start = len(self.unfrozen_block_names)
        names = []
        for name, block in self._blocks[start : self._stages[self.stage + 1][1]]:
            self._add_block(block, optimizer, name)
            names.append(name)
        self._history.append({"epoch": epoch, "blocks": names})
        self._reset_plateau()
        if _compiled(pl_module):
            # new trainable parameters fail the compiled graphs' guards: start the stage from
            # empty caches, or every stage adds recompilations until Dynamo's limit silently
            # leaves the rest of training in eager mode
            torch._dynamo.reset()
        _info(
            f"Epoch {epoch}: unfreezing stage {self.stage}/{len(self._stages) - 1} unfroze "
            f"{', '.join(names)} (lr {optimizer.param_groups[0]['lr'] * self.lr_factor:.3g}); "
            f"{start + len(names)}/{len(self._blocks)} backbone blocks trainable"
        )

    def _reset_plateau(self) -> None:
        """Forget the plateau trigger's best value and count (a new stage begins)."""
        self._best, self._wait, self._advance = None, 0, False

    def _add_block(self, block: nn.Module, optimizer: Optimizer, name: str) -> None:
        """Make ``block`` trainable and add its new parameters as a param group.

        Like ``BaseFinetuning.unfreeze_and_add_param_group`` but parameters already in the
        optimizer are recognised by identity: Lightning compares values (``torch.equal``), which
        drops e.g. a fresh BatchNorm's ones/zeros when an equal tensor is already there.
        """
        self.make_trainable(block)
        block.train()  # its BatchNorm layers were held in eval mode while it was frozen
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

    def _update_frozen_bn(self, pl_module: pl.LightningModule) -> None:
        """Hold the still-frozen backbone's BatchNorm layers (none with ``train_bn``)."""
        if not self.train_bn:
            unfrozen = [block for _, block in self._blocks[: len(self.unfrozen_block_names)]]
            self._frozen_bn.update(pl_module.backbone, unfrozen)


def _compiled(pl_module: pl.LightningModule) -> bool:
    """Whether the module's backbone is compiled (``CXRClassifier.compile_backbone``)."""
    return bool(getattr(pl_module, "compiled", False))


def _param_ids(optimizer: Optimizer) -> set[int]:
    """The ``id`` of every parameter in ``optimizer``'s param groups."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}
