"""File -> network input, and back: the one place that says how an image is preprocessed.

:class:`Preprocessing` holds every parameter (image size, resize policy, interpolation,
histogram equalisation, input channels, which choose the normalisation constants) and does
every step: decode a file to 8-bit grey (:meth:`~Preprocessing.decode`), fit it into the
network's square (:meth:`~Preprocessing.to_square`; both at once: :meth:`~Preprocessing.load`),
normalise a uint8 batch on its device (:meth:`~Preprocessing.normalise`), map a map over the
square back onto the original image (:meth:`~Preprocessing.to_original_geometry`), and write
or read its record (:meth:`~Preprocessing.record`, :meth:`~Preprocessing.from_record`), which
``model.pt`` and the checkpoints carry. The image cache stores the squares
(:class:`~cxr_lightning.data.cache.CacheSpec` adds only storage), training normalises them, and
prediction runs the same methods on new files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cxr_lightning.data.images import MAX_PIXELS, read_image_uint8
from cxr_lightning.errors import ModelMismatchError

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = 3
"""Version of what a file becomes under given parameters (decoding, resizing) and of the cache
that stores it: bump it when either changes. Models record it (``cache_format_version``)."""
RESIZE_POLICIES = ("pad", "squash", "center_crop")
INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GREY_MEAN: float = sum(IMAGENET_MEAN) / 3
GREY_STD: float = sum(IMAGENET_STD) / 3
SQUARE_FIELDS = ("image_size", "resize", "interpolation", "histogram_equalization")
"""The parameters that decide the uint8 square (what a cache holds); ``channels`` does not."""


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes the network's input.

    ``resize``: ``pad`` keeps the aspect ratio and pads to a square with 0 (black), the image
    centred (an odd remainder goes to the bottom/right); ``squash`` stretches to the square;
    ``center_crop`` keeps the central square. ``interpolation="area"`` (cv2.INTER_AREA) is the
    anti-aliased choice for downsampling. ``histogram_equalization`` is passed to
    :func:`~cxr_lightning.data.images.read_image_uint8`. ``channels=3``: grey replicated to 3
    channels with ImageNet's per-channel mean and std (the study's input); ``channels=1``: one
    channel with the mean of ImageNet's means and stds (a backbone whose stem was collapsed).
    """

    image_size: int
    resize: str = "pad"
    interpolation: str = "area"
    histogram_equalization: bool = False
    channels: int = 3

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize={self.resize!r}: expected one of {RESIZE_POLICIES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r}: expected one of "
                             f"{tuple(INTERPOLATIONS)}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive: {self}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    def decode(self, path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """One DICOM/PNG/JPEG file as 8-bit grey (255 = bright); ImageDecodeError if not."""
        return read_image_uint8(path, histogram_equalization=self.histogram_equalization,
                                max_pixels=max_pixels)

    def to_square(self, image: np.ndarray) -> np.ndarray:
        """A 2-D uint8 image resized to (image_size, image_size) under the resize policy."""
        if image.ndim != 2 or min(image.shape) < 1:
            raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
        size, flag = self.image_size, INTERPOLATIONS[self.interpolation]
        height, width = image.shape
        if self.resize == "squash":
            return cv2.resize(image, (size, size), interpolation=flag)
        if self.resize == "center_crop":
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            return cv2.resize(image[top:top + side, left:left + side], (size, size),
                              interpolation=flag)
        top, left, new_h, new_w = pad_box(height, width, size)
        padded = np.zeros((size, size), dtype=np.uint8)
        padded[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h),
                                                                interpolation=flag)
        return padded

    def load(self, path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """One file decoded and fitted into the square: the (S, S) uint8 image a cache holds."""
        return self.to_square(self.decode(path, max_pixels))

    def to_original_geometry(self, square_map: np.ndarray,
                             original_shape: tuple[int, int]) -> np.ndarray:
        """A float (S, S) map over the network's input -> (H, W) over the original image.

        ``pad``: the letterbox bars are cut off and the rest scaled to (H, W); ``squash``:
        scaled to (H, W); ``center_crop``: scaled onto the central square the network saw, 0
        on the sides it never saw. Bilinear interpolation.
        """
        height, width = original_shape
        square_map = np.asarray(square_map, dtype=np.float32)
        if self.resize == "squash":
            return cv2.resize(square_map, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.resize == "pad":
            top, left, new_h, new_w = pad_box(height, width, self.image_size)
            content = square_map[top:top + new_h, left:left + new_w]
            return cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR)
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        result = np.zeros((height, width), dtype=np.float32)
        result[top:top + side, left:left + side] = cv2.resize(square_map, (side, side),
                                                              interpolation=cv2.INTER_LINEAR)
        return result

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) grey -> float (B, channels, H, W), ``(x / 255 - mean) / std``, on
        whatever device ``images`` is on, without waiting for it (the constants are made once
        per device). With one channel it equals the 3-channel backbone on the grey image
        replicated and normalised with that one mean and std."""
        grey = images.unsqueeze(1).float().div_(255.0)
        if self.channels == 1:
            return (grey - GREY_MEAN) / GREY_STD
        mean, std = _imagenet_constants(images.device)
        return (grey - mean) / std

    def square_record(self) -> dict[str, Any]:
        """The parameters that decide the uint8 square (:data:`SQUARE_FIELDS`)."""
        return {key: getattr(self, key) for key in SQUARE_FIELDS}

    def record(self) -> dict[str, Any]:
        """Plain values stating everything that turns a file into the network's input: the
        square's parameters, :data:`PREPROCESSING_VERSION` and the normalisation
        ``{channels, mean, std}``, measured by normalising black and white pixels, so the
        record states what the code does rather than repeating its constants."""
        probe = self.normalise(torch.tensor([[[0, 255]]], dtype=torch.uint8))
        black, white = probe[0, :, 0, 0].double(), probe[0, :, 0, 1].double()
        std = 1.0 / (white - black)
        return {**self.square_record(), "cache_format_version": PREPROCESSING_VERSION,
                "normalisation": {"channels": self.channels, "mean": (-black * std).tolist(),
                                  "std": std.tolist()}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing a :meth:`record` states; :class:`ModelMismatchError` when it is
        incomplete or this code normalises differently, a warning when it was made by another
        :data:`PREPROCESSING_VERSION`."""
        missing = [key for key in (*SQUARE_FIELDS, "normalisation") if key not in record]
        if missing:
            raise ModelMismatchError(f"the model's preprocessing record lacks {missing}")
        stored = record["normalisation"]
        preprocessing = cls(**{key: record[key] for key in SQUARE_FIELDS},
                            channels=int(stored["channels"]))
        current = preprocessing.record()["normalisation"]
        if not all(np.allclose(stored[key], current[key], rtol=0, atol=1e-6)
                   for key in ("mean", "std")):
            raise ModelMismatchError(
                f"the model was trained with the normalisation {dict(stored)}, but this code "
                f"applies {current}: use the code version the model records")
        version = record.get("cache_format_version")
        if version != PREPROCESSING_VERSION:
            log.warning("The model was trained on cache format %s, this code writes format %s: "
                        "its decoding may differ from the model's training images",
                        version, PREPROCESSING_VERSION)
        return preprocessing


def pad_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(top, left, new_h, new_w)``: where the ``pad`` policy puts an image in its square
    (aspect kept, the longer side scaled to ``size``, centred, an odd remainder bottom/right)."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


@cache
def _imagenet_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as (1, 3, 1, 1) tensors on ``device``, created once per device
    (creating them per batch is a host-to-device copy, which waits for the device). Never
    inference tensors, so a first call under ``torch.inference_mode`` does not taint training."""
    shape = (1, 3, 1, 1)
    with torch.inference_mode(False):
        return (torch.tensor(IMAGENET_MEAN, device=device).view(shape),
                torch.tensor(IMAGENET_STD, device=device).view(shape))
