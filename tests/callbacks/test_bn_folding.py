"""Frozen BatchNorm folded into the convolution before it: same function, restored afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from cxr_lightning.callbacks.bn_folding import FrozenBatchNormFolding, conv_bn_pairs
from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.models.backbones import build_backbone, unfreezable_blocks


def _patched(module: nn.Module) -> list[str]:
    """Names of the modules whose forward is swapped (an instance attribute)."""
    return [name for name, m in module.named_modules() if "forward" in vars(m)]


def _trunk(name: str) -> nn.Module:
    torch.manual_seed(0)
    trunk, _ = build_backbone(name, None)
    for bn in trunk.modules():  # non-trivial statistics, as after training
        if isinstance(bn, _BatchNorm):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return trunk.eval().requires_grad_(False)


@pytest.mark.parametrize(("name", "pairs"), [
    ("resnet18", 20),      # every BatchNorm of a ResNet follows a convolution
    ("resnet50", 53),
    ("densenet121", 59),   # conv0 -> norm0, and conv1 -> norm2 in each of the 58 dense layers
])
def test_pairs_are_the_convolution_batchnorm_sequences(name, pairs):
    trunk = _trunk(name)
    found = conv_bn_pairs(trunk)
    assert len(found) == pairs
    assert all(isinstance(c, nn.Conv2d) and isinstance(b, _BatchNorm) for c, b in found)
    assert all(c.out_channels == b.num_features for c, b in found)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_folded_trunk_computes_the_same_function_and_unfolds_exactly(name):
    trunk = _trunk(name)
    images = torch.randn(2, 3, 64, 64)
    before = trunk(images)
    folding = FrozenBatchNormFolding(trunk)
    frozen = [m for m in trunk.modules() if isinstance(m, _BatchNorm)]
    assert folding.refold(frozen) == len(folding.pairs)
    torch.testing.assert_close(trunk(images), before, atol=1e-4, rtol=1e-4)
    folding.unfold()
    assert _patched(trunk) == []
    assert torch.equal(trunk(images), before)


class Probe(pl.Callback):
    """The swapped modules at the first step of each epoch."""

    def __init__(self) -> None:
        self.patched: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.patched.append(_patched(pl_module.backbone))


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _trunk("resnet18").requires_grad_(True).train()
        self.head = nn.Linear(512, 1)
        self.losses: list[float] = []

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        return unfreezable_blocks(self.backbone)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.binary_cross_entropy_with_logits(self.head(self.backbone(images)).squeeze(1),
                                                  labels)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)


def _fit(fold: bool) -> tuple[Tiny, Probe]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,)).float())
    module, probe = Tiny(), Probe()
    pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               callbacks=[ProgressiveUnfreezing(interval=1, max_blocks=1, fold_frozen_bn=fold),
                          probe]).fit(module, DataLoader(data, batch_size=4))
    return module, probe


def test_folding_follows_the_stages_and_leaves_training_unchanged():
    folded, probe = _fit(fold=True)
    plain, plain_probe = _fit(fold=False)
    assert plain_probe.patched == [[], [], []]
    head_only, layer4_1, _ = probe.patched
    assert len(head_only) == 2 * 20  # every (conv, bn) pair of the frozen trunk
    # layer4.1 unfrozen at epoch 1: its two pairs run as themselves again
    assert sorted(set(head_only) - set(layer4_1)) == [
        "layer4.1.bn1", "layer4.1.bn2", "layer4.1.conv1", "layer4.1.conv2"]
    assert _patched(folded.backbone) == []  # handed back unfolded
    torch.testing.assert_close(torch.tensor(folded.losses), torch.tensor(plain.losses),
                               atol=1e-4, rtol=1e-4)
    for (name, value), other in zip(folded.state_dict().items(), plain.state_dict().values(),
                                    strict=True):
        torch.testing.assert_close(value, other, atol=1e-4, rtol=1e-4, msg=name)
