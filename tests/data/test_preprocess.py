"""Preprocessing: file -> square -> normalised input, the way back, and its record.

References: arrays whose area-resampling is exact by construction (2x2 blocks averaged),
OpenCV's own resize of the decoded array, the square's non-zero pixels (for ``pad_box``), a
smooth image mapped there and back, ImageNet's published constants, and JSON.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from cxr_lightning.data.preprocess import PREPROCESSING_VERSION, Preprocessing, pad_box
from cxr_lightning.errors import ModelMismatchError

SHAPES = [(40, 50), (50, 40), (33, 64), (64, 17), (31, 31), (100, 3)]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_pad_keeps_the_aspect_ratio_and_centres_on_black():
    blocks = np.array([[10, 20, 30, 40], [50, 60, 70, 80]], dtype=np.uint8)
    wide = np.kron(blocks, np.ones((2, 2), dtype=np.uint8))  # 4 x 8: 2x2 blocks average exactly
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1:3] = blocks
    np.testing.assert_array_equal(Preprocessing(4).to_square(wide), expected)
    column = np.array([[90], [100], [110]], dtype=np.uint8)
    tall = np.kron(column, np.ones((2, 2), dtype=np.uint8))  # 6 x 2 -> 3 x 1, centred column
    expected = np.zeros((3, 3), dtype=np.uint8)
    expected[:, 1:2] = column
    np.testing.assert_array_equal(Preprocessing(3).to_square(tall), expected)


def test_squash_stretches_and_center_crop_keeps_the_central_square():
    blocks = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    wide = np.kron(blocks, np.ones((1, 2), dtype=np.uint8))  # 4 x 8: pairs average exactly
    np.testing.assert_array_equal(Preprocessing(4, resize="squash").to_square(wide), blocks)
    image = np.arange(32, dtype=np.uint8).reshape(4, 8)
    crop = Preprocessing(4, resize="center_crop")
    np.testing.assert_array_equal(crop.to_square(image), image[:, 2:6])
    np.testing.assert_array_equal(crop.to_square(image.T), image.T[2:6])


@pytest.mark.parametrize(("options", "message"), [
    ({"resize": "stretch"}, "stretch"),
    ({"interpolation": "cubic"}, "cubic"),
    ({"channels": 2}, "channels must be 1 or 3"),
    ({"image_size": 0}, "positive"),
])
def test_bad_parameters_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**{"image_size": 16, **options})


def test_load_decodes_then_squares(tmp_path):
    """A 16-bit PNG (min-max to 8 bit, data/images' rule), squashed with linear interpolation:
    OpenCV's own resize of the hand-scaled array."""
    rows, cols = np.mgrid[0:30, 0:45]
    image = (1000 + 50 * rows + 20 * cols).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "x.png"), image)
    eight_bit = np.round((image - image.min()) / (image.max() - image.min()) * 255)
    expected = cv2.resize(eight_bit.astype(np.uint8), (16, 16), interpolation=cv2.INTER_LINEAR)
    loaded = Preprocessing(16, resize="squash", interpolation="linear").load(tmp_path / "x.png")
    assert np.abs(loaded.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
def test_pad_box_is_where_the_square_holds_the_image(shape):
    box = np.argwhere(Preprocessing(32).to_square(np.full(shape, 255, np.uint8)) > 0)
    top, left, height, width = pad_box(*shape, 32)
    assert (top, left) == tuple(box.min(axis=0))
    assert (top + height, left + width) == tuple(box.max(axis=0) + 1)


@pytest.mark.parametrize("policy", ["pad", "squash", "center_crop"])
@pytest.mark.parametrize("shape", [(120, 160), (160, 96)])
def test_maps_return_to_the_original_geometry(policy, shape):
    """A smooth original squared and mapped back is the original again (up to the resampling
    blur), with center_crop's unseen sides left at 0."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    original = (127 + 120 * np.sin(rows / 23.0) * np.cos(cols / 17.0)).astype(np.uint8)
    preprocessing = Preprocessing(64, resize=policy)
    square = preprocessing.to_square(original).astype(np.float32)
    back = preprocessing.to_original_geometry(square, shape)
    assert back.shape == shape
    seen = np.ones(shape, bool)
    if policy == "center_crop":
        side = min(shape)
        seen[:] = False
        top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
        seen[top:top + side, left:left + side] = True
        assert (back[~seen] == 0).all()
    error = np.abs(back[seen] - original[seen].astype(np.float32))
    assert error.mean() < 6 and np.median(error) < 4


@pytest.mark.parametrize("channels", [3, 1])
def test_normalise_is_imagenets_per_channel_standardisation(channels):
    images = torch.randint(0, 256, (2, 5, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    normalised = Preprocessing(5, channels=channels).normalise(images)
    assert normalised.shape == (2, channels, 5, 7) and normalised.dtype == torch.float32
    means = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    stds = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    for channel, (mean, std) in enumerate(zip(means, stds, strict=True)):
        expected = (images.double() / 255 - mean) / std
        torch.testing.assert_close(normalised[:, channel].double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preprocessing", [
    Preprocessing(512),
    Preprocessing(48, resize="center_crop", interpolation="linear", histogram_equalization=True,
                  channels=1),
])
def test_record_is_plain_data_and_round_trips(preprocessing):
    record = preprocessing.record()
    assert json.loads(json.dumps(record)) == record
    assert {k: record[k] for k in ("image_size", "resize", "interpolation",
                                   "histogram_equalization")} == {
        "image_size": preprocessing.image_size, "resize": preprocessing.resize,
        "interpolation": preprocessing.interpolation,
        "histogram_equalization": preprocessing.histogram_equalization}
    assert record["cache_format_version"] == PREPROCESSING_VERSION
    stated = record["normalisation"]
    if preprocessing.channels == 3:
        assert stated["mean"] == pytest.approx(IMAGENET_MEAN, abs=1e-6)
        assert stated["std"] == pytest.approx(IMAGENET_STD, abs=1e-6)
    else:
        assert stated["mean"] == pytest.approx([sum(IMAGENET_MEAN) / 3], abs=1e-6)
        assert stated["std"] == pytest.approx([sum(IMAGENET_STD) / 3], abs=1e-6)
    assert Preprocessing.from_record(record) == preprocessing


def test_a_record_this_code_cannot_honour_is_refused(caplog):
    record = Preprocessing(32).record()
    other = {**record, "normalisation": {**record["normalisation"], "mean": [0.5, 0.5, 0.5]}}
    with pytest.raises(ModelMismatchError, match=r"normalisation.*0\.5.*use the code version"):
        Preprocessing.from_record(other)
    with pytest.raises(ModelMismatchError, match=r"lacks \['resize'\]"):
        Preprocessing.from_record({k: v for k, v in record.items() if k != "resize"})
    with caplog.at_level(logging.WARNING):
        older = Preprocessing.from_record({**record, "cache_format_version": 2})
    assert older == Preprocessing(32) and "cache format 2" in caplog.text
