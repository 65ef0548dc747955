"""AdamW's multi-tensor (foreach) and fused kernels, run for real over an unfreezing stage change
with a scheduler: the same weights as the single-tensor reference implementation."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation
from tests.callbacks.test_compile import Noise


def _fit(device: str, **kernel: bool) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = CXRClassifier(
        MultilabelFormulation(), backbone="resnet18", weights=None,
        optimizer=functools.partial(torch.optim.AdamW, **kernel),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4))
    trainer = pl.Trainer(accelerator=device, devices=1, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, limit_val_batches=1,
                         callbacks=[ProgressiveUnfreezing(interval=1, max_blocks=1)])
    loader = DataLoader(Noise(), batch_size=4)
    trainer.fit(model, loader, loader)
    return {k: v.cpu() for k, v in model.state_dict().items()}, trainer.optimizers[0]


@functools.cache
def _reference(device: str) -> dict[str, torch.Tensor]:
    """The single-tensor (for-loop) AdamW's weights, fitted once per device."""
    return _fit(device, foreach=False, fused=False)[0]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_adamw_kernels_match_the_reference_over_a_stage_change(device: str, kernel: str):
    reference = _reference(device)
    weights, optimizer = _fit(device, **{kernel: True})
    assert optimizer.defaults[kernel] is True
    assert [g.get("name") for g in optimizer.param_groups] == [None, "backbone.layer4.1"]
    for name, expected in reference.items():
        torch.testing.assert_close(weights[name], expected, rtol=1e-4, atol=1e-5,
                                   msg=lambda message, name=name: f"{name}: {message}")
    # the unfrozen block trained (the comparison covers a stage change)
    torch.manual_seed(0)
    initial = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    assert not torch.equal(weights["backbone.layer4.1.conv1.weight"],
                           initial.state_dict()["backbone.layer4.1.conv1.weight"])
