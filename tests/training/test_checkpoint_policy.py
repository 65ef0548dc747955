"""checkpoints.keep decides which checkpoint files a model leaves: best, best+last, or all."""

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.demos.boring_classes import BoringModel

from tests.training.test_configs import _compose


class ScoredModel(BoringModel):
    """Logs the monitored metric; it peaks at epoch 1 of 3."""

    def on_validation_epoch_end(self):
        self.log("val/auroc/mean", torch.tensor([0.6, 0.9, 0.7][self.current_epoch]))


@pytest.mark.parametrize(("keep", "files"), [
    ("best", {"best.ckpt"}),
    ("best+last", {"best.ckpt", "last.ckpt"}),
    ("all", {"epoch=000.ckpt", "epoch=001.ckpt", "epoch=002.ckpt", "last.ckpt"}),
])
def test_checkpoint_files_follow_the_policy(tmp_path, keep, files):
    cfg = _compose("preset=sample", f"checkpoints.keep={keep}")
    checkpoint = instantiate(cfg.callbacks.model_checkpoint, dirpath=tmp_path)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                         callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(ScoredModel())
    assert {p.name for p in tmp_path.iterdir()} == files
    assert torch.load(checkpoint.best_model_path, weights_only=False)["epoch"] == 1


def test_an_unknown_policy_names_the_choices():
    with pytest.raises(Exception, match=r"checkpoints.keep='some'.*'best', 'best\+last', 'all'"):
        instantiate(_compose("preset=sample", "checkpoints.keep=some").callbacks.model_checkpoint)
