"""Grey input end to end: model.in_channels=1 collapses the stem, data.channels follows it."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from cxr_lightning.data.datamodule import CXRDataModule
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation
from cxr_lightning.train import PROJECT_CONF_DIR


def test_in_channels_one_composes_one_channel_data():
    with initialize_config_dir(config_dir=str(PROJECT_CONF_DIR), version_base="1.3"):
        grey = compose(config_name="train", overrides=["preset=sample", "model.in_channels=1"])
        rgb = compose(config_name="train", overrides=["preset=sample"])
    assert (grey.data.channels, rgb.data.channels) == (1, 3)


def test_one_channel_model_equals_three_channel_model_on_its_batches(small_sample, tmp_path):
    datamodule = CXRDataModule(root=str(small_sample), source="sample", image_size=32,
                               batch_size=8, num_workers=0, cache_dir=str(tmp_path / "cache"),
                               cache_workers=1, channels=1)
    datamodule.prepare_data()
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    assert batch["image"].shape[1] == 1
    torch.manual_seed(0)
    rgb = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights="none").eval()
    trunk_weights = Path(tmp_path / "trunk.pt")
    torch.save(rgb.backbone.state_dict(), trunk_weights)
    grey = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=str(trunk_weights),
                         in_channels=1).eval()
    grey.head.load_state_dict(rgb.head.state_dict())
    # Independent reference: the stem's RGB kernels summed by hand.
    torch.testing.assert_close(grey.backbone.conv1.weight,
                               rgb.backbone.conv1.weight.sum(dim=1, keepdim=True))
    with torch.no_grad():
        replicated = rgb(batch["image"].expand(-1, 3, -1, -1))
        collapsed = grey(batch["image"])
    torch.testing.assert_close(collapsed, replicated, atol=1e-5, rtol=1e-5)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2,
                         limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(grey, datamodule=datamodule)  # the training path takes 1-channel batches
    assert trainer.state.finished
