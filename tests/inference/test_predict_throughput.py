"""Prediction's throughput options (decoding workers: test_predict): the device-only options
are chosen by device type, batched Grad-CAM equals per-image Grad-CAM, and overlays written by
the pool are the files a sequential write gives.

References: pytorch-grad-cam run the
plain way (the whole network, one image and one finding at a time); overlays written one by one
in this process with write_overlay.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference import predictor
from cxr_lightning.inference.bundle import load_model
from cxr_lightning.inference.heatmaps import finding_heatmaps, gradcam_layer, write_overlay
from cxr_lightning.inference.images import InputImages, collate_inputs
from cxr_lightning.inference.network import FindingProbabilities
from cxr_lightning.inference.predictor import default_workers, device_options, predict_files
from tests.helpers.bundles import random_models, saved_model
from tests.inference.test_predict import _grey, _write


def test_cuda_options_are_chosen_by_device_type(monkeypatch):
    cpu = device_options(torch.device("cpu"))
    assert (cpu.autocast, cpu.memory_format, cpu.pin_memory) == (
        None, torch.contiguous_format, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda = device_options(torch.device("cuda:1"))
    assert (cuda.autocast, cuda.memory_format, cuda.pin_memory) == (
        torch.bfloat16, torch.channels_last, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device_options(torch.device("cuda")).autocast is None  # e.g. a V100: float32


def test_default_workers(monkeypatch):
    monkeypatch.setattr(predictor.os, "sched_getaffinity", lambda _: set(range(16)),
                        raising=False)
    assert default_workers(files=16, batch_size=16) == 0  # one batch: nothing to overlap
    assert default_workers(files=33, batch_size=16) == 3
    assert default_workers(files=1000, batch_size=16) == 8
    monkeypatch.setattr(predictor.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert default_workers(files=1000, batch_size=16) == 2


def _per_image_gradcam(network: FindingProbabilities, images: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam the plain way: the whole network, one image and one finding a call."""
    maps = np.zeros((len(images), len(FINDINGS), *images.shape[-2:]), dtype=np.float32)
    for column, finding in enumerate(FINDINGS):
        member = next(i for i, f in enumerate(network.formulations) if finding in f.findings)
        cam = GradCAM(model=network, target_layers=[gradcam_layer(network.backbones[member])])
        try:
            for row, image in enumerate(images):
                with torch.enable_grad():
                    maps[row, column] = cam(input_tensor=image[None].clone().requires_grad_(),
                                            targets=[ClassifierOutputTarget(column)])[0]
        finally:
            cam.activations_and_grads.release()
    return maps


@pytest.mark.parametrize("formulation", ["binary", "multilabel", "multiclass"])
def test_batched_gradcam_equals_per_image_gradcam(formulation):
    network = FindingProbabilities(random_models(formulation, seed=0)).eval()
    network.requires_grad_(False)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    batched = finding_heatmaps(network, images)
    assert batched.shape == (3, 2, 64, 64)
    assert (batched.std(axis=(2, 3)) > 0.05).all()  # informative maps, not all zero
    np.testing.assert_allclose(batched, _per_image_gradcam(network, images), atol=1e-4)


def test_pool_writes_the_overlays_a_sequential_write_gives(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = [_write(folder / f"image{i}.png", _grey((90 + 7 * i, 100), seed=i))
             for i in range(5)]
    # 96 px: ResNet18's last block is 3x3, so the maps vary (at 32 px it is 1x1: constant maps)
    bundle = load_model(saved_model(tmp_path, "multilabel", preprocessing=Preprocessing(96))[0])
    table = predict_files(bundle, files, tmp_path / "out", heatmaps=True, batch_size=2,
                          device="cpu", num_workers=2)
    network = bundle.network()
    dataset = InputImages(files, bundle.preprocessing, keep_originals=True)
    for start in range(0, len(files), 2):  # the predictor's batches, written one by one here
        batch = collate_inputs([dataset[i] for i in range(start, min(start + 2, len(files)))])
        maps = finding_heatmaps(network, bundle.preprocessing.normalise(batch.images))
        assert (maps.std(axis=(2, 3)) > 0.05).all()  # informative maps: a mix-up would show
        for item, item_maps in zip(batch.items, maps, strict=True):
            for finding, square_map in zip(FINDINGS, item_maps, strict=True):
                expected = write_overlay(
                    tmp_path / "expected.png", item.original,
                    bundle.preprocessing.to_original_geometry(square_map, item.original_shape),
                    finding, table[f"{finding}_prob"].iloc[item.index])
                written = tmp_path / "out" / table[f"{finding}_heatmap"].iloc[item.index]
                assert written.read_bytes() == expected.read_bytes(), written
