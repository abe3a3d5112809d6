"""CIFAR-10 from scratch on this machine's CPU: the lab's plain-CNN recipe against cnnlab's
`fast` recipes, accuracy and training wall time on the same (shared JPEG) data, in one run.

    python benchmarks/cifar_time_to_accuracy.py                      # lab (1 seed) + fast (2 seeds)
    python benchmarks/cifar_time_to_accuracy.py --recipes fast fast-60s --seeds 0 1 --skip-lab
    python benchmarks/cifar_time_to_accuracy.py --throughput         # fp32 vs bf16 img/s only

(a) `lab`: the course lab as written, transcribed literally: torchvision ImageFolder over the
    JPEGs (the zip extracted to a temporary folder first; extraction is not timed),
    ToTensor + Normalize((0.5,)*3, (0.5,)*3), DataLoader(batch_size=32, shuffle=True),
    the lab's SimpleCNN, Adam(lr=1e-3), CrossEntropyLoss, 5 epochs.
(b) `fast`, `fast-60s`: cnnlab's recipes through the package's own pieces (load_cifar,
    iter_batches, recipes.make_optimizer / lr_lambda / LookaheadState / predict). The loop
    below is the minimal one those pieces need; `cnnlab train` replaces it once it exists.

Training wall time counts everything from the model's construction to the last optimizer
step (whitening init included), and excludes data loading (cached: ~0.1 s) and the final
evaluation, which is reported separately. Threads: torch.set_num_threads(2) (both cores).
Timings on a shared machine are noisy: the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import recipes as R
from cnnlab.data.cifar import load_cifar
from cnnlab.data.tensor_batches import iter_batches, normalize
from cnnlab.models.registry import create_model

DATA = Path(os.environ.get("CNNLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ZIP = DATA / "cifar10" / "cifar10-jpg.zip"


# ---------------------------------------------------------------------------------------------
# (a) the lab, as written


class SimpleCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 8 * 8, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 8 * 8)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def run_lab(seed: int, epochs: int = 5) -> dict:
    import torchvision
    import torchvision.transforms as transforms

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(ZIP) as zf:
            zf.extractall(tmp)
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
        )
        trainset = torchvision.datasets.ImageFolder(f"{tmp}/train", transform=transform)
        testset = torchvision.datasets.ImageFolder(f"{tmp}/test", transform=transform)
        trainloader = torch.utils.data.DataLoader(trainset, batch_size=32, shuffle=True)
        testloader = torch.utils.data.DataLoader(testset, batch_size=32, shuffle=False)

        start = time.perf_counter()
        net = SimpleCNN()
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
        for _epoch in range(epochs):
            for inputs, labels in trainloader:
                optimizer.zero_grad()
                loss = criterion(net(inputs), labels)
                loss.backward()
                optimizer.step()
        train_s = time.perf_counter() - start

        start = time.perf_counter()
        correct = total = 0
        with torch.no_grad():
            for images, labels in testloader:
                correct += (net(images).argmax(1) == labels).sum().item()
                total += labels.size(0)
        eval_s = time.perf_counter() - start
    return {"recipe": "lab", "seed": seed, "train_s": train_s, "eval_s": eval_s,
            "acc": correct / total, "images": epochs * len(trainset)}


# ---------------------------------------------------------------------------------------------
# (b) cnnlab's recipes through the package's functions


def evaluate(model, data, mean, std, tta: str, autocast) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
        for xb, yb in iter_batches(data.test_x, data.test_y, 1000, shuffle=False,
                                   drop_last=False, mean=mean, std=std):
            correct += (R.predict(model, xb, tta).argmax(1) == yb).sum().item()
    model.train()
    return correct / len(data.test_y)


def run_recipe(recipe: R.Recipe, data, seed: int, precision: str | None = None) -> dict:
    if precision:
        recipe = dataclasses.replace(recipe, precision=precision)
    autocast = R.autocast_dtype(recipe.precision)
    mean, std = (data.mean, data.std) if recipe.normalization == "dataset" else ((0.5,) * 3,) * 2
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = create_model(recipe.model, **dict(recipe.model_options))
    model = model.to(memory_format=torch.channels_last)
    if recipe.whiten_images:
        R.prepare_model(recipe, model, normalize(data.train_x[: recipe.whiten_images], mean, std))
    optimizer = R.make_optimizer(recipe, model)
    total = recipe.total_steps(len(data.train_y))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, R.lr_lambda(recipe.schedule, total))
    lookahead = R.LookaheadState(model, recipe.lookahead) if recipe.lookahead else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    step = 0
    for epoch in range(math.ceil(recipe.epochs)):
        if recipe.whiten_images:
            model.whiten.bias.requires_grad_(R.whiten_bias_trains(recipe, epoch))
        for xb, yb in iter_batches(data.train_x, data.train_y, recipe.batch_size, seed=seed,
                                   epoch=epoch, augment=recipe.augment, mean=mean, std=std):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
                loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if lookahead is not None:
                lookahead.step(model, step, total)
            if step >= total:
                break
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    acc = evaluate(model, data, mean, std, recipe.tta, autocast)
    eval_s = time.perf_counter() - start
    return {"recipe": recipe.name, "seed": seed, "train_s": train_s, "eval_s": eval_s,
            "acc": acc, "images": step * recipe.batch_size, "precision": str(autocast)}


def throughput(recipe: R.Recipe, batches: int = 8, repeats: int = 3) -> None:
    """Training images per second of the recipe's model, fp32 against bf16 autocast, alternated
    in one process so that both see the same machine load; medians over `repeats`."""
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for precision in rates:
            model = create_model(recipe.model, **dict(recipe.model_options))
            model = model.to(memory_format=torch.channels_last)
            opt = R.make_optimizer(recipe, model)
            x = torch.randn(recipe.batch_size, 3, 32, 32).contiguous(
                memory_format=torch.channels_last)
            y = torch.randint(0, 10, (recipe.batch_size,))
            times = []
            for _ in range(batches + 2):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            rates[precision].append(recipe.batch_size / statistics.median(times[2:]))
    fp32, bf16 = (statistics.median(rates[p]) for p in ("fp32", "bf16"))
    print(f"{recipe.name} ({recipe.model} {dict(recipe.model_options)}, batch "
          f"{recipe.batch_size}): fp32 {fp32:.0f} img/s, bf16 {bf16:.0f} img/s, "
          f"bf16/fp32 {bf16 / fp32:.2f}x  (load {os.getloadavg()[0]:.1f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", nargs="+", default=["fast", "fast-60s"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--skip-lab", action="store_true")
    ap.add_argument("--lab-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--precision", choices=R.PRECISIONS, default=None)
    ap.add_argument("--throughput", action="store_true", help="only fp32 vs bf16 img/s")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"native bf16: {R.cpu_has_bf16()}, capability {torch.backends.cpu.get_cpu_capability()}")
    if args.throughput:
        for name in args.recipes:
            throughput(R.get_recipe(name))
        return
    if not ZIP.is_file():
        sys.exit(f"CIFAR-10 zip not found: {ZIP} (set CNNLAB_DATA)")
    rows = []
    if not args.skip_lab:
        rows += [run_lab(seed) for seed in args.lab_seeds]
        print(rows[-1], flush=True)
    data = load_cifar(ZIP)
    for name in args.recipes:
        for seed in args.seeds:
            rows.append(run_recipe(R.get_recipe(name), data, seed, args.precision))
            print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{'recipe':10} {'seed':>4} {'train s':>8} {'test acc':>8} {'img/s':>7}")
    for r in rows:
        print(f"{r['recipe']:10} {r['seed']:>4} {r['train_s']:>8.1f} {100 * r['acc']:>7.2f}% "
              f"{r['images'] / r['train_s']:>7.0f}")
    for name in {r["recipe"] for r in rows}:
        accs = [r["acc"] for r in rows if r["recipe"] == name]
        times = [r["train_s"] for r in rows if r["recipe"] == name]
        spread = f" ± {100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        print(f"{name}: {100 * statistics.mean(accs):.2f}%{spread} in "
              f"{statistics.median(times):.0f} s (median of {len(times)})")


if __name__ == "__main__":
    main()
