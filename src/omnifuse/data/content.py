"""What a decoded media item *is*, as a hash of its content: the one identity that every feature cache keys
items by (the classify recipes' features on disk, the generative path's frozen-encoder cache)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def content_hash(item: Image.Image | np.ndarray) -> str:
    """SHA-256 of a decoded image (its mode, size and pixel bytes) or array (dtype, shape and bytes): two
    items with the same hash give an encoder the same input, whatever file or request they came from."""
    h = hashlib.sha256()
    if isinstance(item, Image.Image):
        h.update(f"image {item.mode} {item.size}".encode())
        h.update(item.tobytes())
    else:
        array = np.ascontiguousarray(item)
        h.update(f"array {array.dtype} {array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()
