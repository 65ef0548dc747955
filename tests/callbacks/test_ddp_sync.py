"""DDP keeps one model through unfreezing: 2 gloo ranks with batch B each train exactly what one
process with batch 2B trains, over two stage changes (blocks unfrozen after the DDP wrap)."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing

B = 4


class Blocks(pl.LightningModule):
    """Two unfreezable blocks and a head; plain SGD, so the steps are easy to compare."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        return [("1", self.backbone[2]), ("0", self.backbone[0])]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        return F.mse_loss(self.head(self.backbone(inputs)).squeeze(1), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.2)


def _fit(batch_size: int, ranks: int) -> Blocks:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 8, generator=generator),
                         torch.randn(32, generator=generator))
    # Lightning gives each of 2 ranks a shuffling DistributedSampler (seed PL_GLOBAL_SEED):
    # rank r takes the r-th of every 2 samples of the epoch's permutation, so the ranks' k-th
    # batches together are the k-th batch of 2B of that permutation, which one process reads
    # through the same sampler with one replica
    sampler = None if ranks > 1 else DistributedSampler(
        data, num_replicas=1, rank=0, shuffle=True, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
    model = Blocks()
    pl.Trainer(accelerator="cpu", devices=ranks, strategy="ddp_fork" if ranks > 1 else "auto",
               max_epochs=3, logger=False, enable_checkpointing=False,
               enable_model_summary=False, enable_progress_bar=False,
               callbacks=[ProgressiveUnfreezing(interval=1)]).fit(
        model, DataLoader(data, batch_size=batch_size, sampler=sampler))
    return model


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_ranks_of_batch_b_train_what_one_process_of_batch_2b_trains():
    single = _fit(2 * B, ranks=1)
    ddp = _fit(B, ranks=2)  # rank zero's weights come back to this process
    for (name, expected), actual in zip(single.state_dict().items(),
                                        ddp.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6,
                                   msg=lambda message, name=name: f"{name}: {message}")
    # the check can fail: the blocks trained after their unfreezing
    assert not torch.equal(single.backbone[0].weight, Blocks().backbone[0].weight)
