"""An image file -> the network's input, through the very functions that fill the training cache.

The model's :class:`~cxr_lightning.data.preprocess.Preprocessing` decodes a file (DICOM
windowing, MONOCHROME1, PNG/JPEG grey rules, optional histogram equalisation) and fits it into
the uint8 square the cache would hold; its ``normalise`` on the device then gives the float
batch training fed the network. Nothing is re-specified here.

A file that cannot be decoded (missing, corrupt, no pixel data, colour, smaller than 2x2,
larger than the pixel limit, unsupported type, out of memory, any other exception) becomes an
item with its reason, never an exception, so a batch always completes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_lightning.data.preprocess import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """One input: the cache-identical square, or the reason it could not be made."""

    index: int
    path: Path
    square: np.ndarray | None
    original_shape: tuple[int, int] | None
    original: np.ndarray | None
    """The decoded full-size grey image, kept only when asked (heatmap backgrounds)."""
    error: str = ""


@dataclass
class InputBatch:
    """A collated batch: the decoded images stacked, the failures with their reasons."""

    items: list[PreparedImage]
    images: torch.Tensor
    """uint8 (k, S, S) of the k decoded items, in order (``decoded``)."""

    @property
    def decoded(self) -> list[PreparedImage]:
        return [item for item in self.items if not item.error]

    def pin_memory(self) -> InputBatch:
        """The batch with its images in page-locked memory (DataLoader ``pin_memory=True``
        calls this), so that their copy to a GPU can be asynchronous."""
        return InputBatch(self.items, self.images.pin_memory())


def prepare_image(path: Path, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """The decoded grey image (H, W) and its resized square (S, S), both uint8."""
    original = preprocessing.decode(path)
    return original, preprocessing.to_square(original)


class InputImages(Dataset):
    """Map-style dataset of input files prepared under a model's preprocessing
    (DataLoader-ready)."""

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing,
                 keep_originals: bool = False) -> None:
        self.paths = list(paths)
        self.preprocessing = preprocessing
        self.keep_originals = keep_originals

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> PreparedImage:
        path = self.paths[index]
        try:
            original, square = prepare_image(path, self.preprocessing)
        except Exception as error:  # any failure (decode, memory) is this file's error row
            log.warning("Skipping %s: %s", path, error)
            return PreparedImage(index, path, None, None, None,
                                 f"{type(error).__name__}: {error}")
        kept = original if self.keep_originals else None
        return PreparedImage(index, path, square, original.shape, kept)


def collate_inputs(items: list[PreparedImage]) -> InputBatch:
    """DataLoader ``collate_fn``: stack the decoded squares, keep every item."""
    squares = [torch.from_numpy(np.ascontiguousarray(item.square))
               for item in items if not item.error]
    empty = torch.empty((0, 0, 0), dtype=torch.uint8)
    return InputBatch(items, torch.stack(squares) if squares else empty)
