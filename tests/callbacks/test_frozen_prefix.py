"""The frozen prefix of the backbone builds no autograd graph during training.

Forward hooks record, at the first training step of every epoch of a real ``trainer.fit`` of
:class:`CXRClassifier` (resnet18, random init, 32 px), whether each backbone block's output and
the trunk's output require grad. Backward can only reach blocks whose output does.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.utils.data import DataLoader

from cxr_lightning.callbacks.baselines import NaiveFreeze
from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation

PROBED = {"stem", "trunk", *(f"layer{stage}.{i}" for stage in range(1, 5) for i in range(2))}


class GraphProbe(pl.Callback):
    """Per epoch: ``{block or "trunk": output.requires_grad}`` at the first training step."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, bool]] = []
        self.trunk_grad_fn: list[bool] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, block in pl_module.unfreezable_blocks():
            # The stem is a ModuleList (never called): its output is that of its last layer.
            module = block[-1] if isinstance(block, nn.ModuleList) else block
            self._hooks.append(module.register_forward_hook(self._hook(name)))
        self._hooks.append(pl_module.backbone.register_forward_hook(self._hook("trunk")))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for hook in self._hooks:
            hook.remove()

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if name not in self.epochs[-1]:
                self.epochs[-1][name] = output.requires_grad
                if name == "trunk":
                    self.trunk_grad_fn.append(output.grad_fn is not None)

        return record




def _fit(freezer: BaseFinetuning, epochs: int) -> GraphProbe:
    """Fit a random-init resnet18 classifier for ``epochs`` one-step epochs under ``freezer``."""
    torch.manual_seed(0)
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights="none")
    batch = {"image": torch.randn(4, 3, 32, 32), "labels": torch.tensor([[0.0, 1.0]] * 4)}
    probe = GraphProbe()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_val_batches=0,
        callbacks=[freezer, probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    return probe


def test_head_only_stage_builds_no_graph_and_unfrozen_block_starts_it() -> None:
    probe = _fit(ProgressiveUnfreezing(interval=1), epochs=2)
    head_only, layer4_1 = probe.epochs
    assert head_only.keys() == layer4_1.keys() == PROBED
    assert not any(head_only.values()), head_only
    # Epoch 1 unfroze layer4.1 only: the graph starts there, layer4.0 and below have none.
    assert {name for name, requires_grad in layer4_1.items() if requires_grad} == {
        "layer4.1",
        "trunk",
    }
    assert probe.trunk_grad_fn == [False, True]


def test_naive_freeze_builds_a_graph_through_the_whole_trunk() -> None:
    probe = _fit(NaiveFreeze(), epochs=1)
    (epoch,) = probe.epochs
    assert epoch.keys() == PROBED
    assert all(epoch.values()), epoch
    assert probe.trunk_grad_fn == [True]
