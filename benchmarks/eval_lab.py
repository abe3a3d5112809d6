"""The lab's evaluation pipeline, reproduced faithfully as the baseline for eval_vs_lab.py.

    python benchmarks/eval_lab.py FOLDER [--model efficientnet_lite0]

What the lab did (and why it does not scale):
- one line per class ("tench, Tinca tinca"), label matched with `line.startswith(label)`;
- every image read, transformed, and appended with `torch.cat` in a loop (quadratic copying);
- one forward pass over all images at once, with autograd on (every activation of every image
  kept for a backward pass that never comes: 6 GB for 100 photos through GoogLeNet).
Same model, weights and preprocessing as `cnnlab evaluate` so that only the pipeline differs.
"""

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
    lines = [", ".join(s) for s in load_imagenet_classes().synonyms]
    transform = T.Compose([
        T.Resize(pp.resize_size, interpolation=T.InterpolationMode(pp.interpolation)),
        T.CenterCrop(pp.crop_size),
        T.ToTensor(),
        T.Normalize(pp.mean, pp.std),
    ])
    images, labels = None, []
    for f in sorted(Path(args.folder).iterdir()):
        # "n01440764_tench.JPEG" -> "tench": the lab's photos were named by class.
        name = re.sub(r"^n\d{8}_", "", f.stem).replace("_", " ")
        labels.append(next(i for i, line in enumerate(lines) if line.startswith(name)))
        x = transform(Image.open(f).convert("RGB")).unsqueeze(0)
        images = x if images is None else torch.cat([images, x])
    model.eval()
    out = model(images)  # autograd on, one batch
    top5 = out.topk(5, dim=1).indices
    y = torch.tensor(labels)
    top1_err = 100 * (top5[:, 0] != y).float().mean().item()
    top5_err = 100 * (~(top5 == y[:, None]).any(dim=1)).float().mean().item()
    print(json.dumps({"n": len(labels), "top1_error": top1_err, "top5_error": top5_err,
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
