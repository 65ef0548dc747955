"""Grad-CAM heatmaps: the target each finding's map is taken for, and maps on real NIH
ChestX-ray14 radiographs (the way back to the original geometry: test_preprocess).

References: Grad-CAM computed by hand (forward hook + torch.autograd.grad + the paper's
channel weighting) and the original files' sizes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cxr_lightning.data.preprocess import Preprocessing
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference import heatmaps
from cxr_lightning.inference.bundle import load_model
from cxr_lightning.inference.heatmaps import finding_heatmaps, gradcam_layer
from cxr_lightning.inference.images import prepare_image
from cxr_lightning.inference.network import FindingProbabilities
from cxr_lightning.inference.predictor import predict_files
from cxr_lightning.models.backbones import build_backbone
from tests.helpers.bundles import random_models, saved_model
from tests.inference.test_predict import _grey, _write


def _hand_gradcam(model, images: torch.Tensor, target) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) of ``target(logits)`` (N,) at ``model``'s last ResNet block:
    ReLU(sum_k mean(dY/dA_k) A_k), min-max scaled, bilinearly resized to the input, scaled again."""
    captured = {}
    handle = model.backbone.layer4[-1].register_forward_hook(
        lambda _m, _i, output: captured.setdefault("a", output))
    try:
        score = target(model.head(model.backbone(images))).sum()
    finally:
        handle.remove()
    activations = captured["a"]
    gradients, = torch.autograd.grad(score, activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activations).sum(dim=1)).detach().numpy()
    size = images.shape[-1]
    maps = []
    for cam in cams:  # scaled to [0, 1] before and after the bilinear upsampling
        upsampled = cv2.resize(_min_max(cam).astype(np.float32), (size, size))
        maps.append(_min_max(upsampled))
    return np.stack(maps)


def _min_max(values: np.ndarray) -> np.ndarray:
    shifted = values - values.min()
    return shifted / (shifted.max() + 1e-7)


def test_multiclass_maps_target_the_marginal_probability():
    model = random_models("multiclass", seed=0)[0]
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    maps = finding_heatmaps(FindingProbabilities([model]), images)
    assert maps.shape == (2, 2, 128, 128)
    assert (maps.std(axis=(2, 3)) > 0.1).all()  # informative maps, not all zero
    marginals = {"edema": (2, 3), "effusion": (1, 3)}  # class = 2*edema + effusion
    for column, finding in enumerate(FINDINGS):
        classes = list(marginals[finding])
        expected = _hand_gradcam(
            model, images, lambda logits, c=classes: torch.softmax(logits, 1)[:, c].sum(1))
        np.testing.assert_allclose(maps[:, column], expected, atol=1e-4)
    assert not np.allclose(maps[:, 0], maps[:, 1])


def test_binary_maps_come_from_each_findings_own_model():
    models = random_models("binary", seed=0)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    maps = finding_heatmaps(FindingProbabilities(models), images)
    assert (maps.std(axis=(2, 3)) > 0.1).all()
    for column, model in enumerate(models):  # the logit's map: sigmoid only rescales it
        expected = _hand_gradcam(model, images, lambda logits: logits[:, 0])
        np.testing.assert_allclose(maps[:, column], expected, atol=1e-4)


def test_target_layer_is_the_last_block():
    resnet, _ = build_backbone("resnet18", "none")
    assert gradcam_layer(resnet) is resnet.layer4[1]
    densenet, _ = build_backbone("densenet121", "none")
    assert gradcam_layer(densenet) is densenet.features.norm5
    with pytest.raises(TypeError, match="ResNet and DenseNet"):
        gradcam_layer(torch.nn.Conv2d(1, 1, 1))


def test_overlays_show_the_finding_its_probability_and_a_colour_bar(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = [_write(folder / "wide.png", _grey((40, 50))),
             _write(folder / "tall.png", _grey((300, 200), seed=1))]
    bundle = load_model(saved_model(tmp_path, "multilabel", preprocessing=Preprocessing(96))[0])
    table = predict_files(bundle, files, tmp_path / "out", heatmaps=True, device="cpu")
    for index, path in enumerate(files):
        height, width = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape
        for finding in FINDINGS:
            png = Image.open(tmp_path / "out" / table[f"{finding}_heatmap"].iloc[index])
            probability = table[f"{finding}_prob"].iloc[index]  # predictions.csv's number
            assert png.text["Title"] == f"{finding}: probability {probability:.3f}"
            pixels = np.asarray(png.convert("RGB")).astype(int)
            title, bar = png.height - height, png.width - width  # the margins
            assert title >= 20 and bar >= 60, (title, bar)
            assert (pixels[:title].min(axis=2) < 100).any()  # dark title text on white
            # the colour bar beside the image: JET, red (1) above blue (0)
            strip = pixels[title:, width:]
            reds = np.argwhere((strip[..., 0] > 150) & (strip[..., 2] < 100))
            blues = np.argwhere((strip[..., 2] > 150) & (strip[..., 0] < 100))
            assert len(reds) and len(blues) and reds[:, 0].mean() < blues[:, 0].mean()


@pytest.mark.realdata
def test_heatmaps_on_real_radiographs(shared_data, tmp_path):
    folder = shared_data / "nih_chestxray14_fullres" / "images"
    originals = sorted(folder.glob("*.png"))[:2]
    sizes = {Image.open(p).size for p in sorted(folder.glob("*.png"))}
    larger = next(p for p in sorted(folder.glob("*.png"))
                  if Image.open(p).size == max(sizes))
    cropped = tmp_path / "cropped.png"  # a non-square radiograph: letterboxed by pad
    full = cv2.imread(str(larger), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(cropped), full[full.shape[0] // 5:])
    files = [*originals, cropped]
    model_path, _ = saved_model(tmp_path, "multilabel", preprocessing=Preprocessing(64))
    bundle = load_model(model_path)
    out = tmp_path / "out"
    table = predict_files(bundle, files, out_dir=out, heatmaps=True, device="cpu")
    assert (table["error"] == "").all()
    network = bundle.network()
    for index, path in enumerate(files):
        original, square = prepare_image(path, bundle.preprocessing)
        images = bundle.preprocessing.normalise(torch.from_numpy(square)[None])
        maps = finding_heatmaps(network, images)
        for column, finding in enumerate(FINDINGS):
            heatmap = bundle.preprocessing.to_original_geometry(maps[0, column],
                                                                original.shape)
            assert heatmap.shape == original.shape
            assert heatmap.std() > 0.05, (path, finding)  # not constant
            assert heatmap.min() >= 0 and heatmap.max() <= 1
            overlay = np.asarray(Image.open(out / table[f"{finding}_heatmap"].iloc[index]))
            title, bar = heatmaps.margins(original.shape)
            assert overlay.shape == (original.shape[0] + title, original.shape[1] + bar, 3)
