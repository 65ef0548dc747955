"""Where an image lies in the cache's square, to map a square map back onto the original."""

from __future__ import annotations

import cv2
import numpy as np

from cxr_lightning.data.cache import CacheSpec, pad_box


def to_original_geometry(square_map: np.ndarray, original_shape: tuple[int, int],
                         spec: CacheSpec) -> np.ndarray:
    """A float (S, S) map over the network's input -> (H, W) over the original image.

    ``pad``: the letterbox bars are cut off and the rest scaled to (H, W); ``squash``: scaled
    to (H, W); ``center_crop``: scaled onto the central square the network saw, 0 on the
    sides it never saw. Bilinear interpolation.
    """
    height, width = original_shape
    square_map = np.asarray(square_map, dtype=np.float32)
    if spec.resize == "squash":
        return cv2.resize(square_map, (width, height), interpolation=cv2.INTER_LINEAR)
    if spec.resize == "pad":
        top, left, new_h, new_w = pad_box(height, width, spec.image_size)
        content = square_map[top:top + new_h, left:left + new_w]
        return cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR)
    if spec.resize != "center_crop":
        raise ValueError(f"resize={spec.resize!r}: no inverse geometry")
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    result = np.zeros((height, width), dtype=np.float32)
    result[top:top + side, left:left + side] = cv2.resize(square_map, (side, side),
                                                          interpolation=cv2.INTER_LINEAR)
    return result
