"""The lab's transfer-learning loop, transcribed literally, as the baseline for
finetune_vs_lab.py.

    python benchmarks/finetune_lab.py DATA [--model efficientnet_lite0] [--epochs 30]

What the lab did: torchvision `ImageFolder` + `Resize(256) + CenterCrop(224)`, every parameter
frozen, the last layer replaced by `Linear + LogSoftmax`, `NLLLoss`, Adam at its default rate
(1e-3), batch 8, 30 epochs; `model.train()` for each training epoch and the frozen body re-run on
every batch of every epoch, then the validation photos scored after each epoch (the lab's
curves). Only the backbone differs: EfficientNet-Lite0 (the weights available offline) with its
own normalisation (mean = std = 0.5), instead of AlexNet. Note that `model.train()` on a network
with BatchNorm also lets the frozen body's BatchNorm use batch statistics and overwrite its
running statistics (AlexNet has no BatchNorm, so the lab never saw this); kept as written.

Prints one JSON line: per-epoch train/val accuracy and the wall time of the loop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()

    from cnnlab.models.registry import create_pretrained

    start = time.perf_counter()
    torch.manual_seed(0)
    model, pp, _ = create_pretrained(args.model)
    transform = T.Compose([
        T.Resize(pp.resize_size, interpolation=T.InterpolationMode(pp.interpolation)),
        T.CenterCrop(pp.crop_size),
        T.ToTensor(),
        T.Normalize(pp.mean, pp.std),
    ])
    train_set = ImageFolder(str(args.data / "train"), transform)
    val_set = ImageFolder(str(args.data / "val"), transform)
    train_loader = DataLoader(train_set, batch_size=8, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=8)

    for p in model.parameters():
        p.requires_grad = False
    model.classifier = nn.Sequential(nn.Linear(model.classifier.in_features,
                                               len(train_set.classes)),
                                     nn.LogSoftmax(dim=1))
    criterion = nn.NLLLoss()
    optimizer = optim.Adam(model.classifier.parameters())

    history = []
    for epoch in range(args.epochs):
        model.train()
        correct = seen = 0
        for x, y in train_loader:
            optimizer.zero_grad()
            out = model(x)
            loss = criterion(out, y)
            loss.backward()
            optimizer.step()
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        model.eval()
        val_correct = val_seen = 0
        with torch.no_grad():
            for x, y in val_loader:
                val_correct += int((model(x).argmax(1) == y).sum())
                val_seen += len(y)
        history.append({"epoch": epoch + 1, "train_accuracy": 100 * correct / seen,
                        "val_accuracy": 100 * val_correct / val_seen,
                        "elapsed_s": round(time.perf_counter() - start, 1)})
        print(json.dumps(history[-1]), flush=True)
    # The lab's last cell: the held-out test photos scored once with the trained model (only
    # where DATA has a test/ folder, as the lab's own data and the few-shot folders do).
    test = {}
    if (args.data / "test").is_dir():
        test_set = ImageFolder(str(args.data / "test"), transform)
        wrong = 0
        with torch.no_grad():
            for x, y in DataLoader(test_set, batch_size=8):
                wrong += int((model(x).argmax(1) != y).sum())
        test = {"test_wrong": wrong, "n_test": len(test_set)}
    print(json.dumps({"val_accuracy": history[-1]["val_accuracy"],
                      "train_accuracy": history[-1]["train_accuracy"],
                      "n_train": len(train_set), "n_val": len(val_set), **test,
                      "seconds": time.perf_counter() - start, "history": history}))


if __name__ == "__main__":
    main()
