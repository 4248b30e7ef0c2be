"""Preprocessing shared by training, export validation and inference.

The model takes raw pixels in [0, 1] as float32 ``(N, T=28, F=28)``: row ``t`` of the image is
time step ``t``. Any normalisation lives inside the model, so exported graphs take the same input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_SIZE = 28
PIXEL_SCALE = 255.0


def describe() -> dict[str, Any]:
    """The preprocessing recorded in checkpoints and ONNX metadata."""
    return {
        "input_shape": ["N", IMAGE_SIZE, IMAGE_SIZE],
        "layout": "N,T=rows,F=columns",
        "dtype": "float32",
        "scale": f"uint8 / {PIXEL_SCALE:g}",
        "range": [0.0, 1.0],
        "polarity": "light digit on dark background (MNIST)",
        "normalization": "inside the model",
        # How `lstm-export infer` turns image files into the uint8 digits above (infer/images.py).
        "image_files": {
            "decode": "Pillow: first frame, EXIF orientation, alpha composited onto the"
            " background contrasting with the ink, grayscale (ITU-R 601-2 luma), 16-bit scaled",
            "polarity": "auto: inverted when most of the 1-px border is light (> 127); yes; no",
            "resize": "padded to a square with the border median, resized to 28x28"
            " (box filter down, bicubic up); a 28x28 image is unchanged",
            "fit": "optional (--fit): blur + Otsu mask, levels stretched, cropped to the digit,"
            " longer side 20 px, centre of mass at (14, 14) in the 28x28 field (as MNIST)",
            "scale": f"uint8 / {PIXEL_SCALE:g} (to_model_input)",
        },
    }


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, 28, 28)`` -> float32 model input ``(N, 28, 28)`` in [0, 1]."""
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.astype(np.float32) / np.float32(PIXEL_SCALE)
