"""Grad-CAM without autograd for a layer followed only by global average pooling and a Linear
layer (EfficientNet-Lite's bn2; detected by models/linear_head.py, never assumed).

    raw = linear_gradcam(activations[i], head.weight, [predicted, true])   # (2, h, w)
    maps = finish_maps(raw, (224, 224))                                    # (2, 224, 224) in [0, 1]

Why it is exact: with logits = W @ mean_hw(A) + b, d logit_c / d A[k, i, j] = W[c, k] / (h * w)
at every position, so Grad-CAM's channel weights (the spatial mean of that gradient) are
W[c] / (h * w), and its map is ReLU(sum_k W[c, k] / (h * w) * A[k]), then grad-cam's min-max,
cv2 resize and min-max (explanations.finish_maps). The 1 / (h * w) is kept: grad-cam's min-max
divides by (1e-7 + max), so the scale shows in the last digits. tests/test_linear_cams.py holds
the maps equal to gradcam_batch's and to grad-cam's GradCAM.

The cost is one (K, C) x (C, h * w) product per photo on activations that the scoring pass
already computed (the ONNX graph's second output): no PyTorch model, no second forward pass, no
backward pass. numpy only.
"""

from __future__ import annotations

import numpy as np


def linear_gradcam(activations: np.ndarray, weight: np.ndarray,
                   classes: list[int]) -> np.ndarray:
    """Grad-CAM of `classes` for one photo's layer activations (C, h, w), before scaling:
    (len(classes), h, w) float32, ReLU applied. `weight`: the Linear head's (classes, C)."""
    c, h, w = activations.shape
    channel_weights = weight[classes].astype(np.float32) / np.float32(h * w)
    cams = channel_weights @ activations.reshape(c, h * w).astype(np.float32)
    return np.maximum(cams, 0).reshape(len(classes), h, w).astype(np.float32)
