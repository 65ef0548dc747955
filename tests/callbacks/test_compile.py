"""A compiled backbone stays compiled through a whole progressive-unfreezing schedule.

Each unfreeze changes ``requires_grad`` of some parameters, which fails the compiled graphs'
guards; without a reset, every stage adds recompilations until Dynamo's recompile limit, after
which it silently runs the frame eagerly for the rest of training. Here the limit is set low
and made an error (``fail_on_recompile_limit_hit``), so a fallback fails the test, and Dynamo's
counters show that each stage compiled its own graphs. The ``aot_eager`` backend traces and
partitions forward and backward like Inductor but generates no C++; Inductor itself compiles a
tiny conv-BatchNorm backbone through one stage change.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader, Dataset

from cxr_lightning.callbacks.unfreeze import ProgressiveUnfreezing
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation


class Noise(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        return {"image": torch.randn(3, 32, 32, generator=generator),
                "labels": torch.tensor([float(index % 2), float(index // 4)])}


class GraphsPerEpoch(pl.Callback):
    """Dynamo's count of compiled graphs at the end of every training epoch."""

    def __init__(self) -> None:
        self.graphs: list[int] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.graphs.append(counters["stats"]["unique_graphs"])


@torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True)
def test_the_compiled_backbone_survives_every_unfreeze(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    model.compile_backbone(backend="aot_eager")
    unfreezing = ProgressiveUnfreezing(interval=1, max_blocks=3)
    graphs = GraphsPerEpoch()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=4, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, callbacks=[unfreezing, graphs],
                         limit_val_batches=1, default_root_dir=tmp_path)
    loader = DataLoader(Noise(), batch_size=4)
    trainer.fit(model, loader, loader)
    assert unfreezing.stage == 3 and trainer.current_epoch == 4
    assert not unfreezing.fold_frozen_bn  # folding is off under compile
    # every stage (one per epoch) compiled graphs of its own, none ran eagerly
    assert all(b > a for a, b in zip([0, *graphs.graphs], graphs.graphs, strict=False)), graphs
    assert not counters["stats"].get("unimplemented") and not counters["graph_break"]
    torch._dynamo.reset()


@torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True)
def test_without_the_reset_the_schedule_hits_the_recompile_limit(monkeypatch, tmp_path):
    """The check above can fail: the same schedule without the per-stage reset errors out."""
    monkeypatch.setattr(torch._dynamo, "reset", lambda: None)
    counters.clear()
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    model.compile_backbone(backend="aot_eager")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=4, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False,
                         callbacks=[ProgressiveUnfreezing(interval=1, max_blocks=3)],
                         limit_val_batches=1, default_root_dir=tmp_path)
    loader = DataLoader(Noise(), batch_size=4)
    with pytest.raises(Exception, match="(?i)recompile|cache_size|cache size"):
        trainer.fit(model, loader, loader)
    monkeypatch.undo()
    torch._dynamo.reset()


class TinyConv(pl.LightningModule):
    """Two conv-BatchNorm blocks and a head: a graph Inductor compiles in seconds on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2)
        self.backbone.compile(backend="inductor", dynamic=False)

    @property
    def compiled(self) -> bool:
        return True

    def unfreezable_blocks(self) -> list[tuple[str, nn.Module]]:
        return [("1", self.backbone[1]), ("0", self.backbone[0])]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.head(self.backbone(batch["image"]))
        return F.binary_cross_entropy_with_logits(logits, batch["labels"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad])


@torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True)
def test_inductor_compiles_a_backbone_through_a_stage_change(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    model = TinyConv()
    unfreezing = ProgressiveUnfreezing(interval=1, max_blocks=1)
    graphs = GraphsPerEpoch()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, limit_val_batches=0,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, callbacks=[unfreezing, graphs],
                         default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(Noise(), batch_size=4))
    assert unfreezing.unfrozen_block_names == ["1"] and trainer.current_epoch == 2
    assert graphs.graphs[0] > 0 and graphs.graphs[1] > graphs.graphs[0], graphs.graphs
    assert not counters["stats"].get("unimplemented") and not counters["graph_break"]
    torch._dynamo.reset()

