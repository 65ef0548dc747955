"""Training throughput settings: loader options, worker start-up, layout and optimizer kernel."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_lightning.data.datamodule import PREFETCH_FACTOR
from cxr_lightning.models.classifier import CXRClassifier
from cxr_lightning.models.formulations import MultilabelFormulation
from tests.helpers.bundles import sample_datamodule


@pytest.fixture()
def datamodule(small_sample):
    return sample_datamodule(small_sample, resize="squash")


def test_training_batches_are_all_full(datamodule):
    train = len(datamodule.split_manifest("train"))
    assert train % 8, "the sample's training split should not be a multiple of the batch"
    sizes = [len(batch["labels"]) for batch in datamodule.train_dataloader()]
    assert sizes == [8] * (train // 8)
    # evaluation keeps every image
    val = [len(batch["labels"]) for batch in datamodule.val_dataloader()]
    assert sum(val) == len(datamodule.split_manifest("val"))


def test_a_split_smaller_than_a_batch_still_trains(datamodule):
    datamodule.batch_size = len(datamodule.split_manifest("train")) + 1
    assert len(list(datamodule.train_dataloader())) == 1


def test_workers_prefetch_ahead(datamodule):
    datamodule.num_workers = 1
    assert datamodule._loader_options()["prefetch_factor"] == PREFETCH_FACTOR
    datamodule.num_workers = 0
    assert "prefetch_factor" not in datamodule._loader_options()


def test_the_whole_model_trains_channels_last(tmp_path):
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    seen = []
    for conv in (model.backbone.conv1, model.backbone.layer1[0].conv1,
                 model.backbone.layer4[1].conv2):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        conv.register_forward_hook(lambda module, inputs, output: seen.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last)
            and output.is_contiguous(memory_format=torch.channels_last)))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [True, True, True]


def test_adamw_uses_the_multi_tensor_kernel_on_cpu():
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]


class Noise(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.randn(3, 32, 32), "labels": torch.zeros(2)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_autotunes_and_fuses_adamw(tmp_path):
    model = CXRClassifier(MultilabelFormulation(), backbone="resnet18", weights=None)
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=1, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(Noise(), batch_size=4))
    assert torch.backends.cudnn.benchmark
    assert trainer.optimizers[0].defaults["fused"] is True
