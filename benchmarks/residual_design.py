"""Choosing the residual study's design, and the train step's batch size (issue 26, items 1-2).

    python benchmarks/residual_design.py speed   [--size 8 --width 4 --batch 32 ...]
    python benchmarks/residual_design.py curves  --size 8 --width 4 --batch 32 --steps 1500 \
        --nets plain20 plain56 resnet20 resnet56 --seeds 0 1 2 [--lr 0.05] [--classes 10]
    python benchmarks/residual_design.py trainstep --model resnet18 --batch 128 --steps 140

Run it `nice`, on one thread (OMP_NUM_THREADS=1; the script sets torch's threads to 1): on a
shared machine wall seconds mean little, so every timing here is *CPU* seconds of this process
(time.process_time) per optimizer step, fp32 and bf16 autocast measured in the same run, and
the question "how many steps until the net stops learning" is answered in steps, which do not
depend on the machine.

`curves`: He et al. 2016's CIFAR nets (models/resnet_cifar.py, option A) trained with the
residual study's recipe (experiment.RESIDUAL_RECIPE, written out below: SGD momentum 0.9, wd
1e-4, one-cycle: 20% linear warm-up from 0.1x lr, then linearly to 0; translations of
`pad` pixels with zero padding + random flips) on a fixed random sample of CIFAR-10's training
set (seed 0, `per_class` images of each of the first `classes` classes), area-averaged to
`size` x `size`. Every `every` steps: the training error on a fixed sample of at most 1,000 of
those training images (eval mode, no augmentation: the study's "training error") and the mean
training loss of the window (the study's `plateau_share` reads those). One JSON line per run.

Plateau, measured two ways (both printed):
- the lab's heuristic on the run's own loss curve (`experiment.plateau_share`: the share of the
  loss drop that came in the last quarter of the steps, < 0.15 = stopped);
- the doubling test, the honest one for a schedule that anneals to zero: the final training
  error of a run of S steps against one of 2S steps (same seeds); the net had reached its
  plateau at S when doubling its steps lowers its final training error by less than the seed
  noise (run `curves` at S and 2S and compare).

`trainstep`: item 1, the lab's train step. The `fast` recipe carried over to `resnet18` /
`simple-cnn` (tasks/train.with_model: lr 0.1 for BatchNorm nets and for simple-cnn at batch
1024, Nesterov 0.85, wd 1.33e-3, label smoothing 0.2, lookahead, 2-px reflect translations,
alternate flips), at a smaller batch with the learning rate scaled from the recipe's by
`--lr-rule` (linear: lr x batch/1024; sqrt: lr x sqrt(batch/1024); none), for `--steps` steps
(what the budget buys: see `speed --trainstep`), on all 50,000 32x32 training images; tested on
the 10,000 test images without TTA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab.data.cifar import downscale, load_cifar, subset  # noqa: E402
from cnnlab.data.tensor_batches import Augment, iter_batches, normalize  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"
TRAIN_EVAL = 1000


def load(size: int, per_class: int | None, classes: int = 10):
    """CIFAR-10 from the decode cache: the first `classes` classes, `per_class` training images
    of each (seed 0, as the study's sample), shrunk to `size` x `size`."""
    data = load_cifar(DATA)
    if classes < 10:
        from dataclasses import replace

        keep = data.train_y < classes
        tkeep = data.test_y < classes
        data = replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep],
                       test_x=data.test_x[tkeep], test_y=data.test_y[tkeep],
                       classes=data.classes[:classes])
    if per_class:
        data = subset(data, per_class=per_class, seed=0, test_too=False)
    if size != 32:
        data = downscale(data, size)
    return data


def eval_sample(data, n: int = TRAIN_EVAL):
    """A fixed stratified sample of the training images (all of them when fewer than n)."""
    if len(data.train_y) <= n:
        return data.train_x, data.train_y
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_y), generator=g)[:n]
    return data.train_x[idx], data.train_y[idx]


@torch.no_grad()
def error(model, x, y, mean, std) -> float:
    model.eval()
    hits = 0
    for s in range(0, len(x), 1000):
        hits += int((model(normalize(x[s:s + 1000], mean, std)).argmax(1) == y[s:s + 1000]).sum())
    model.train()
    return 100.0 * (1 - hits / len(x))


def one_cycle(step: int, total: int, warmup: float = 0.2, start: float = 0.1,
              end: float = 0.0) -> float:
    """recipes.lr_factor's kind "linear": from `start` to 1 over the first `warmup` of the
    steps, then linearly to `end` (0: the one-cycle schedule; 1: constant after the warm-up)."""
    w = int(total * warmup)
    if step < w:
        return start + (1 - start) * step / w
    frac = (step - w) / max(1, total - w)
    return (1 - frac) + end * frac


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def batches_forever(data, batch: int, seed: int, augment: Augment):
    epoch = 0
    while True:
        yield from iter_batches(data.train_x, data.train_y, batch, seed=seed, epoch=epoch,
                                augment=augment, mean=data.mean, std=data.std)
        epoch += 1


def train_curve(net: str, data, *, width: int, batch: int, steps: int, lr: float, seed: int,
                every: int, pad: int, precision: str = "fp32", wd: float = 1e-4,
                schedule: str = "onecycle", warmup: float = 0.2) -> dict:
    """One residual-study run; returns its curve, final error and CPU seconds per step.

    `schedule`: "onecycle" (RESIDUAL_RECIPE's: warm-up, then linearly to 0), "const" (the same
    warm-up, then constant: the training error at S and 2S steps of one run are then read at
    the same rate, the doubling test inside one run), "he" (He et al. 2016, section 4.2, for
    ResNet-110: 0.1 x lr until the training error is below 80%, then the full rate, constant;
    checked at every curve point)."""
    torch.manual_seed(seed)
    model = create_model(net, width=width, num_classes=data.num_classes)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    warm = {"on": schedule == "he"}
    end = 0.0 if schedule == "onecycle" else 1.0

    def factor(s: int) -> float:
        if schedule == "he":
            return 0.1 if warm["on"] else 1.0
        return one_cycle(s, steps, warmup=warmup, end=end)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    loss_fn = nn.CrossEntropyLoss()
    ex, ey = eval_sample(data)
    curve = [[0, error(model, ex, ey, data.mean, data.std)]]
    losses, window = [], []
    cpu = 0.0
    it = batches_forever(data, batch, seed, Augment(pad, "zeros", "random"))
    for step in range(1, steps + 1):
        x, y = next(it)
        t0 = time.process_time()
        with autocast(precision):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        cpu += time.process_time() - t0
        window.append(float(loss.detach()))
        if not math.isfinite(window[-1]):
            break
        if step % every == 0 or step == steps:
            losses.append([step, statistics.fmean(window)])
            window = []
            curve.append([step, error(model, ex, ey, data.mean, data.std)])
            if curve[-1][1] < 80:
                warm["on"] = False
    from cnnlab.tasks.experiment.learning import plateau_share

    return {"net": net, "seed": seed, "steps": steps, "final_error": curve[-1][1],
            "plateau_share": plateau_share([v for _, v in losses]),
            "cpu_per_step": cpu / step, "curve": curve,
            "losses": losses}


def step_seconds(net: str, data, *, width: int, batch: int, precision: str, n: int = 12,
                 options: dict | None = None, lr: float = 0.05) -> float:
    """Median CPU seconds of one training step (after 3 warm-up steps)."""
    torch.manual_seed(0)
    opts = {"num_classes": data.num_classes, **(options if options is not None
                                                else {"width": width})}
    model = create_model(net, **opts).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    it = batches_forever(data, batch, 0, Augment(2, "zeros", "random"))
    times = []
    for i in range(n + 3):
        x, y = next(it)
        t0 = time.process_time()
        with autocast(precision):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.process_time() - t0)
    return statistics.median(times)


def cmd_speed(a) -> None:
    data = load(a.size, a.per_class, a.classes)
    for net in a.nets:
        row = {"net": net, "size": a.size, "width": a.width, "batch": a.batch}
        for p in ("fp32", "bf16"):
            row[p] = round(step_seconds(net, data, width=a.width, batch=a.batch, precision=p),
                           5)
        row["fp32/bf16"] = round(row["fp32"] / row["bf16"], 2)
        print(json.dumps(row), flush=True)


def cmd_curves(a) -> None:
    data = load(a.size, a.per_class, a.classes)
    pad = a.pad if a.pad is not None else max(1, a.size // 8)
    for seed in a.seeds:
        for net in a.nets:
            r = train_curve(net, data, width=a.width, batch=a.batch, steps=a.steps, lr=a.lr,
                            seed=seed, every=a.every or max(1, a.steps // 40), pad=pad,
                            precision=a.precision, schedule=a.schedule, warmup=a.warmup)
            r.update({"size": a.size, "width": a.width, "batch": a.batch, "lr": a.lr,
                      "per_class": a.per_class, "classes": a.classes, "pad": pad,
                      "n_train": len(data.train_y), "schedule": a.schedule})
            print(json.dumps(r), flush=True)


# ------------------------------------------------------------------------------- item 1


def trainstep_recipe(model: str, batch: int, rule: str):
    from dataclasses import replace

    from cnnlab.recipes import FAST
    from cnnlab.tasks.train import with_model

    r = with_model(FAST, model)
    scale = {"linear": batch / r.batch_size, "sqrt": math.sqrt(batch / r.batch_size),
             "none": 1.0}[rule]
    return replace(r, batch_size=batch, lr=r.lr * scale)


def cmd_trainstep(a) -> None:
    from cnnlab import recipes

    data = load(32, None)
    if a.time_only:
        for batch in a.batches:
            r = trainstep_recipe(a.model, batch, a.lr_rule)
            secs = step_seconds(a.model, data, width=0, batch=batch, precision="fp32", n=5,
                                options={}, lr=r.lr)
            print(json.dumps({"model": a.model, "batch": batch, "fp32_cpu_per_step":
                              round(secs, 4)}), flush=True)
        return
    for seed in a.seeds:
        r = trainstep_recipe(a.model, a.batch, a.lr_rule)
        torch.manual_seed(seed)
        model = create_model(a.model, num_classes=10).to(memory_format=torch.channels_last)
        opt = recipes.make_optimizer(r, model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, recipes.lr_lambda(r.schedule, a.steps))
        look = recipes.LookaheadState(model, r.lookahead) if r.lookahead else None
        loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
        epoch, done, cpu = 0, 0, 0.0
        while done < a.steps:
            for x, y in iter_batches(data.train_x, data.train_y, r.batch_size, seed=seed,
                                     epoch=epoch, augment=r.augment, mean=data.mean,
                                     std=data.std):
                t0 = time.process_time()
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if look:
                    look.step(model, done, a.steps)
                cpu += time.process_time() - t0
                if done >= a.steps:
                    break
            epoch += 1
        err = error(model, data.test_x, data.test_y, data.mean, data.std)
        print(json.dumps({"model": a.model, "batch": r.batch_size, "lr": r.lr, "rule": a.lr_rule,
                          "steps": a.steps, "seed": seed, "test_accuracy": round(100 - err, 2),
                          "cpu_per_step": round(cpu / a.steps, 4)}), flush=True)


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("speed", "curves"):
        s = sub.add_parser(name)
        s.add_argument("--size", type=int, default=16)
        s.add_argument("--width", type=int, default=8)
        s.add_argument("--batch", type=int, default=64)
        s.add_argument("--per-class", type=int, default=250)
        s.add_argument("--classes", type=int, default=10)
        s.add_argument("--nets", nargs="+",
                       default=["plain20", "resnet20", "plain56", "resnet56"])
        if name == "curves":
            s.add_argument("--steps", type=int, default=390)
            s.add_argument("--lr", type=float, default=0.05)
            s.add_argument("--seeds", type=int, nargs="+", default=[0])
            s.add_argument("--every", type=int, default=0)
            s.add_argument("--pad", type=int, default=None)
            s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
            s.add_argument("--schedule", choices=("onecycle", "const", "he"), default="onecycle")
            s.add_argument("--warmup", type=float, default=0.2)
    t = sub.add_parser("trainstep")
    t.add_argument("--model", default="resnet18")
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 1024])
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--lr-rule", choices=("linear", "sqrt", "none"), default="sqrt")
    t.add_argument("--time-only", action="store_true")
    a = p.parse_args()
    {"speed": cmd_speed, "curves": cmd_curves, "trainstep": cmd_trainstep}[a.cmd](a)


if __name__ == "__main__":
    main()
