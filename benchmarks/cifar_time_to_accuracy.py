"""CIFAR-10 from scratch on this machine's CPU: the lab's plain-CNN recipe against `cnnlab train`
on the same (shared JPEG) data, accuracy and wall time, in one run.

    python benchmarks/cifar_time_to_accuracy.py                    # lab + fast at 10, 6, 1.5 epochs
    python benchmarks/cifar_time_to_accuracy.py --skip-lab --epochs --budget 60   # equal budget
    python benchmarks/cifar_time_to_accuracy.py --throughput       # fp32 vs bf16 img/s only

(a) `lab`: the course lab as written, transcribed literally: torchvision ImageFolder over the
    JPEGs (the zip extracted to a temporary folder first; extraction is not timed),
    ToTensor + Normalize((0.5,)*3, (0.5,)*3), DataLoader(batch_size=32, shuffle=True),
    the lab's SimpleCNN, Adam(lr=1e-3), CrossEntropyLoss, 5 epochs. Its time is the training
    loop plus the test pass (imports and extraction not counted: in the lab's favour).
(b) `cnnlab train DATA -m fast-cifar --epochs E` (the `fast` recipe, its schedule fitted to E
    epochs), each a fresh process timed from the outside: start-up, data from the decode cache
    (filled once before the first timed run), training, a test pass after every epoch for the
    curves, checkpoints, the final flip/translate TTA evaluation and the report.
(c) `--budget S`: the lab's question on equal terms. simple-cnn, resnet18 (the lab's) and
    fast-cifar, each with the `fast` recipe and the epochs that its measured training
    throughput fits into S seconds, `--budget-seeds` seeds each: mean ± std.

Threads: torch.set_num_threads(2) in this process; cnnlab uses every core by default.
Timings on a shared machine are noisy: the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
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
# (b) cnnlab: `cnnlab train`, each run a fresh process, timed from the outside


def run_cnnlab(args: list[str], out: Path) -> tuple[dict, float]:
    """Runs `cnnlab train ZIP ARGS --out OUT` in a fresh process; returns its results.json and
    the process's whole wall time (start-up, data from the cache, training, per-epoch test
    curves, checkpoints, the final TTA evaluation and the report: everything a user waits for)."""
    cmd = [sys.executable, "-m", "cnnlab", "train", str(ZIP), *args, "--out", str(out), "-q"]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    return json.loads((out / "results.json").read_text()), wall


def time_to_accuracy(epochs: list[float], seeds: list[int], precisions: list[str],
                     extra: list[str], tmp: Path) -> list[dict]:
    rows = []
    for e in epochs:
        for precision in precisions:
            for seed in seeds:
                rows.append(one_fast_run(e, seed, precision, extra, tmp))
    return rows


def one_fast_run(e: float, seed: int, precision: str, extra: list[str], tmp: Path) -> dict:
    res, wall = run_cnnlab(["-m", "fast-cifar", "--epochs", f"{e:g}", "--seed", str(seed),
                            "--precision", precision, *extra],
                           tmp / f"fast-e{e:g}-{precision}-s{seed}")
    r = res["runs"][0]
    row = {"recipe": f"fast {e:g} ep {r['precision']}", "seed": seed, "train_s": r["train_seconds"],
           "wall_s": wall, "acc": r["test_accuracy"],
           "images": r["images_per_second"] * r["train_seconds"], "precision": r["precision"]}
    print(row, f"load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def equal_budget(models: list[str], budget_s: float, seeds: int, tmp: Path,
                 n_train: int = 50_000) -> list[dict]:
    """The lab's question on equal terms: each model with the `fast` recipe and the same time.
    A recipe's schedule must know its length, so each model gets the epochs its measured
    training throughput (bf16/fp32 as --precision auto picks) fits into `budget_s`."""
    rows = []
    fast = R.get_recipe("fast")
    for model in models:
        rate = model_throughput(dataclasses.replace(fast, model=model), R.autocast_dtype("auto"))
        epochs = round(budget_s * rate / n_train, 2)
        res, wall = run_cnnlab(["-m", model, "--epochs", f"{epochs:g}", "--seeds", str(seeds)],
                               tmp / f"budget-{model}")
        m = res["models"][0]
        # results.json's "epochs" is the count of epochs started (ceil); keep the fraction run.
        rows.append({**m, "model": model, "epochs": epochs, "probe_img_s": rate, "wall_s": wall})
        print({k: v for k, v in rows[-1].items() if not isinstance(v, (list, dict))},
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    return rows


def model_throughput(recipe: R.Recipe, dtype, batches: int = 6) -> float:
    """Training images/s of the recipe's model at its batch size (median of `batches` steps)."""
    model = create_model(recipe.model, **dict(recipe.model_options))
    model = model.to(memory_format=torch.channels_last)
    opt = R.make_optimizer(recipe, model)
    x = torch.randn(recipe.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (recipe.batch_size,))
    times = []
    for _ in range(batches + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return recipe.batch_size / statistics.median(times[2:])


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
    ap.add_argument("--epochs", nargs="*", type=float, default=[10, 6, 1.5],
                    help="fast-recipe lengths to time (epochs; fractional allowed)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--precisions", nargs="+", default=["auto"], choices=R.PRECISIONS,
                    help="run each fast length in each (bf16 vs fp32 for the same seed)")
    ap.add_argument("--train-args", default="",
                    help="more `cnnlab train` flags for the fast runs, e.g. '--eval-every 100'")
    ap.add_argument("--skip-lab", action="store_true")
    ap.add_argument("--lab-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget", type=float, default=0,
                    help="seconds of training per model for the equal-budget comparison (0: skip)")
    ap.add_argument("--budget-models", nargs="+", default=["simple-cnn", "resnet18", "fast-cifar"])
    ap.add_argument("--budget-seeds", type=int, default=3)
    ap.add_argument("--throughput", action="store_true", help="only fp32 vs bf16 img/s")
    ap.add_argument("--json", type=Path, help="also write every row to this file")
    ap.add_argument("--keep", type=Path,
                    help="keep cnnlab's run directories (reports, curves) under this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"native bf16: {R.cpu_has_bf16()}, capability {torch.backends.cpu.get_cpu_capability()}")
    if args.throughput:
        for model in args.budget_models:
            throughput(dataclasses.replace(R.get_recipe("fast"), model=model))
        return
    if not ZIP.is_file():
        sys.exit(f"CIFAR-10 zip not found: {ZIP} (set CNNLAB_DATA)")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.keep or Path(tmp)
        if not args.skip_lab:
            for seed in args.lab_seeds:
                rows.append(run_lab(seed))
                rows[-1]["wall_s"] = rows[-1]["train_s"] + rows[-1]["eval_s"]
                print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
        if args.epochs:
            load_cifar(ZIP)  # fill the decode cache once, so that every timed run starts warm
            rows += time_to_accuracy(args.epochs, args.seeds, args.precisions,
                                     args.train_args.split(), runs)
        budget = (equal_budget(args.budget_models, args.budget, args.budget_seeds, runs)
                  if args.budget else [])
    print(f"\n{'recipe':22} {'seed':>4} {'train s':>8} {'wall s':>7} {'test acc':>8} {'img/s':>7}")
    for r in rows:
        print(f"{r['recipe']:22} {r['seed']:>4} {r['train_s']:>8.1f} {r['wall_s']:>7.1f} "
              f"{100 * r['acc']:>7.2f}% {r['images'] / r['train_s']:>7.0f}")
    lab = [r for r in rows if r["recipe"] == "lab"]
    if lab:
        lab_acc = statistics.median(r["acc"] for r in lab)
        lab_s = statistics.median(r["wall_s"] for r in lab)
        print(f"\nlab: {100 * lab_acc:.2f}% in {lab_s:.0f} s (training + test)")
        for r in rows:
            if r is not lab[0] and r["recipe"] != "lab":
                fifth = r["acc"] >= lab_acc and 5 * r["wall_s"] <= lab_s
                within = r["acc"] >= 0.88 and r["wall_s"] <= lab_s
                print(f"  {r['recipe']} seed {r['seed']}: {100 * r['acc']:.2f}% in "
                      f"{r['wall_s']:.0f} s = 1/{lab_s / r['wall_s']:.1f} of the lab's time; "
                      f">= lab accuracy in <= 1/5 of it: {fifth}; >= 88% within it: {within}")
    if budget:
        print(f"\nequal budget: {args.budget:g} s of training per model, "
              f"{args.budget_seeds} seeds, fast recipe")
        print(f"{'model':12} {'epochs':>6} {'test acc':>16} {'params':>10} {'train s':>8} "
              f"{'img/s':>6}")
        for b in budget:
            # results.json holds accuracies in percent already
            print(f"{b['model']:12} {b['epochs']:>6g} {b['test_accuracy_mean']:>8.2f} ± "
                  f"{b['test_accuracy_std'] or 0:.2f}% {b['params']:>10,} "
                  f"{b['train_seconds']:>8.1f} {b['images_per_second']:>6.0f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rows": rows, "budget": budget}, indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
