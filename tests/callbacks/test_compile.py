"""A compiled backbone stays compiled through a whole progressive-unfreezing schedule.

Each unfreeze changes ``requires_grad`` of some parameters, which fails the compiled graphs'
guards; without a reset, every stage adds recompilations until Dynamo's recompile limit, after
which it silently runs the frame eagerly for the rest of training. Here the limit is set low
and made an error (``fail_on_recompile_limit_hit``), so a fallback fails the test, and Dynamo's
counters show that each stage compiled its own graphs. The ``aot_eager`` backend traces and
partitions forward and backward like Inductor but generates no C++; Inductor itself runs one
stage change (slow).
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
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


@pytest.mark.parametrize(("backend", "blocks"), [
    ("aot_eager", 3),
    # Inductor itself, C++ code generated, through one stage change (about a minute on 2 cores)
    pytest.param("inductor", 1, marks=pytest.mark.slow),
])
@torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True)
def test_the_compiled_backbone_survives_every_unfreeze(tmp_path, backend, blocks):
    torch._dynamo.reset()
    counters.clear()
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    model.compile_backbone(backend=backend)
    unfreezing = ProgressiveUnfreezing(interval=1, max_blocks=blocks)
    graphs = GraphsPerEpoch()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=blocks + 1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, callbacks=[unfreezing, graphs],
                         limit_val_batches=1, default_root_dir=tmp_path)
    loader = DataLoader(Noise(), batch_size=4)
    trainer.fit(model, loader, loader)
    assert unfreezing.stage == blocks and trainer.current_epoch == blocks + 1
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
