"""The lab's evaluation pipeline, reproduced faithfully as the baseline for eval_vs_lab.py.

    python benchmarks/eval_lab.py FOLDER [--model efficientnet_lite0]

What the lab did (and why it does not scale):
- one line per class ("tench, Tinca tinca"); a prediction counted as right when the predicted
  class's line `startswith(label)`, the label being the photo's file-name stem (its scoring loop
  is transcribed below; a label accepts every class whose line starts with it);
- every image read, transformed, and appended with `torch.cat` in a loop (quadratic copying);
- one forward pass over all images at once, with autograd on (every activation of every image
  kept for a backward pass that never comes: 6 GB for 100 photos through GoogLeNet).
Same model, weights and preprocessing as `cnnlab evaluate` so that only the pipeline differs.
"""

# ruff: noqa: SIM114 (the lab's scoring loop is kept as it was written)
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()

    from cnnlab.data.imagenet import load_imagenet_classes
    from cnnlab.models.registry import create_pretrained

    start = time.perf_counter()
    model, pp, _ = create_pretrained(args.model)
    lines = list(load_imagenet_classes().lines)  # "tench, Tinca tinca", one per class
    transform = T.Compose([
        T.Resize(pp.resize_size, interpolation=T.InterpolationMode(pp.interpolation)),
        T.CenterCrop(pp.crop_size),
        T.ToTensor(),
        T.Normalize(pp.mean, pp.std),
    ])
    images, labels = None, []
    for f in sorted(Path(args.folder).iterdir()):
        # The lab's photos were named by class ("bee.jpg"); these are "n01440764_tench.JPEG":
        # drop the WordNet id and read "_" as a space, as cnnlab's --match prefix does.
        labels.append(re.sub(r"^n\d{8}_", "", f.stem).replace("_", " "))
        x = transform(Image.open(f).convert("RGB")).unsqueeze(0)
        images = x if images is None else torch.cat([images, x])
    model.eval()
    out = model(images)  # autograd on, one batch
    indices = out.topk(5, dim=1).indices
    classes = lines
    # The lab's scoring loop, verbatim except for layout.
    N = len(labels)
    count_top1 = count_top5 = 0
    for i in range(N):
        if classes[indices[i, 0]].startswith(labels[i]):
            count_top1 += 1
            count_top5 += 1
        elif classes[indices[i, 1]].startswith(labels[i]):
            count_top5 += 1
        elif classes[indices[i, 2]].startswith(labels[i]):
            count_top5 += 1
        elif classes[indices[i, 3]].startswith(labels[i]):
            count_top5 += 1
        elif classes[indices[i, 4]].startswith(labels[i]):
            count_top5 += 1
    top1_err = 100 * (N - count_top1) / N
    top5_err = 100 * (N - count_top5) / N
    print(json.dumps({"n": len(labels), "top1_error": top1_err, "top5_error": top5_err,
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
