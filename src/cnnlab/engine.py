"""The training engine: one epoch loop for every command that trains an image model.

    result = fit(model, optimizer, batches, steps_per_epoch, FitConfig(epochs=30),
                 run_dir, reporter, evaluate=validate, lr_schedule=warmup_cosine(...))

What the caller provides, and what the engine owns:

- the caller builds the model (already on its device), the optimiser, the data and the
  validation function; `batches(epoch)` yields this rank's (x, y) batches of one epoch, in an
  order fixed by (seed, epoch) — `epoch_generator` gives the generator — and the same number of
  batches on every rank (`steps_per_epoch`);
- the engine runs the epochs: learning-rate schedule per step, bf16 autocast when asked,
  gradient clipping, a NaN/Inf guard, per-step hooks (EMA), train loss/accuracy all-reduced
  over ranks, validation, `metrics.jsonl`, the `best` (by the monitored metric) and `last`
  checkpoints (`checkpoints.py`: one atomic unit each), early stopping, a time limit, and exact
  resume: weights, optimiser, RNG states (CPU, CUDA, Python, NumPy), counters and metrics are
  restored from `last`, so a run stopped by `kill -9` and resumed ends as an uninterrupted run.
- Under torchrun the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU);
  rank 0 alone writes files; every rank reads the checkpoint on resume. One code path: a single
  process is a world of one.

Checkpoints are written at the end of every `checkpoint_every` epochs, after validation, so a
resumed run restarts at an epoch boundary with the RNG exactly where the original stood.

Step mode (`FitConfig.unit = "steps"`, charrnn's long epochs of running text): the loop also
stops, validates and checkpoints between epoch ends. The time limit is checked after every step,
validation runs every `eval_every_steps` steps and at every epoch end, `last` is written at such
a point once `checkpoint_seconds` have passed since the previous one (and always at the end),
and a resumed run continues mid-epoch, with the training-loss window not yet logged and the
caller's state (`extra_state`: an RNN's carried hidden state) as they were. Metrics are "step"
records (every `log_every` steps and the last) and "eval" records (each validation); one progress
bar covers the run. A `step_loss(model, x, y)` hook replaces `loss_fn(model(x), y)` for models
whose forward is not `logits = model(x)` (an RNN returning its hidden state too).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab import checkpoints, dist
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir

PRECISIONS = ("fp32", "bf16")
LAST, BEST = "last", "best"


@dataclass(frozen=True)
class FitConfig:
    """How to run the loop; what to train lives with the caller."""

    epochs: int
    # torch.manual_seed(seed) before the first step; None: the RNG as the caller left it (charrnn
    # seeds before building its model, and its dropout draws continue from there).
    seed: int | None = 0
    # Stop after this many optimiser steps, mid-epoch if need be (a recipe of 9.9 epochs runs
    # 10 epochs with the last one cut short); None = epochs * steps_per_epoch.
    max_steps: int | None = None
    precision: str = "fp32"  # "bf16": autocast matmuls/convs to bfloat16 (see precision.py)
    grad_clip: float = 0.0  # global gradient-norm clip; 0 = off
    early_stopping: int = 0  # stop after this many epochs without improvement; 0 = off
    # Key of evaluate()'s metrics that picks the best checkpoint; None: no `best` checkpoint and
    # no early stopping (validation is still run and logged, e.g. for curves).
    monitor: str | None = "val_accuracy"
    mode: str = "max"  # "max" or "min": which direction of `monitor` is better
    time_limit: float | None = None  # seconds of training in this invocation, then stop cleanly
    log_every: int = 50  # steps between train-loss lines in metrics.jsonl (and NaN checks)
    checkpoint_every: int = 1  # epochs between `last` checkpoints (the final epoch always)
    eval_every: int = 1  # epochs between validations (the final epoch always)
    deterministic: bool = False  # torch.use_deterministic_algorithms; slower, bit-reproducible
    unit: str = "epochs"  # "steps": step mode (module docstring); every epoch steps_per_epoch long
    eval_every_steps: int = 0  # step mode: steps between validations (0 = at epoch ends only)
    # Step mode: seconds between `last` checkpoints, taken at the next validation point (0 = at
    # every one); a crash loses at most this much training.
    checkpoint_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise CnnlabError(f"--epochs must be at least 1, not {self.epochs}")
        if self.precision not in PRECISIONS:
            raise CnnlabError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.mode not in ("max", "min"):
            raise CnnlabError(f"monitor mode must be max or min, not {self.mode!r}")
        if self.early_stopping and self.monitor is None:
            raise CnnlabError("early stopping needs a monitored metric")
        if self.grad_clip < 0 or self.early_stopping < 0:
            raise CnnlabError("--grad-clip and --early-stopping must be >= 0")
        if self.time_limit is not None and self.time_limit <= 0:
            raise CnnlabError("--time-limit must be positive (seconds)")
        if self.max_steps is not None and self.max_steps < 1:
            raise CnnlabError(f"max_steps must be at least 1, not {self.max_steps}")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.eval_every < 1:
            raise CnnlabError("log_every, checkpoint_every and eval_every must be at least 1")
        if self.unit not in ("epochs", "steps"):
            raise CnnlabError(f"unit must be epochs or steps, not {self.unit!r}")
        if self.unit == "steps" and (self.early_stopping or self.monitor is not None):
            raise CnnlabError("step mode has no best checkpoint: give monitor=None")
        if self.eval_every_steps < 0 or not self.checkpoint_seconds >= 0:
            raise CnnlabError("eval_every_steps and checkpoint_seconds must be >= 0")


@dataclass
class FitResult:
    epochs_done: int  # completed epochs, over all invocations of a resumed run
    steps: int
    stopped: str  # "completed", "early-stopping" or "time-limit"
    best_epoch: int | None
    best_metric: float | None
    train_seconds: float  # training + validation wall time, summed over invocations
    last: dict[str, Any]  # the last epoch's metrics record (step mode: the last "eval" record)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (or eval)
    # Step mode: the mean training loss of the latest window (the steps since the last "step"
    # record, else that record's).
    train_loss: float | None = None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that fixes an epoch's shuffle and augmentation: a function of (seed, epoch)
    only, so every rank draws the same permutation and a resumed run the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shard_indices(n: int, generator: torch.Generator, info: dist.DistInfo,
                  shuffle: bool = True) -> torch.Tensor:
    """This rank's share of one epoch's permutation of range(n): every rank draws the same
    permutation and takes every world_size-th index, the tail trimmed so that all ranks get the
    same count (DDP needs equal step counts; at most world_size - 1 samples sit out an epoch,
    different ones each epoch)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    per_rank = n // info.world_size
    return order[info.rank :: info.world_size][:per_rank]


def warmup_cosine(total_steps: int, warmup_steps: int = 0, final: float = 0.0
                  ) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up from ~0 to 1, then a cosine to `final`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        frac = min((step - warmup_steps) / span, 1.0)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor) -> int:
    """Top-1 hits in a batch (targets as class indices, or soft/one-hot rows)."""
    if target.ndim > 1:
        target = target.argmax(dim=1)
    return int((logits.argmax(dim=1) == target).sum())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _rng_state() -> dict[str, Any]:
    import numpy as np

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": repr(random.getstate()),  # repr/eval: weights_only loading takes no tuples
        "numpy": {"key": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import ast

    import numpy as np

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(ast.literal_eval(state["python"])))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def seconds_per_step(model: nn.Module, make_optimizer: Callable[[nn.Module], Any],
                     batches: Callable[[int], Iterable], loss_fn: nn.Module, precision: str,
                     device: torch.device, steps: int = 3, warmup: int = 2) -> float:
    """What one optimiser step costs on this machine: `warmup` untimed steps (oneDNN picks its
    kernels on the first calls), then the mean of `steps` timed ones, on a copy of `model` with
    a fresh optimiser and the first batches of epoch 0. For fitting a run to a time budget;
    the model and every RNG are left as they were, so the run itself is unchanged."""
    import copy

    state = _rng_state()
    m = copy.deepcopy(model).train()
    opt = make_optimizer(m)
    it = iter(batches(0))
    start = 0.0
    try:
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:  # an epoch shorter than the timing: start it again
                it = iter(batches(0))
                x, y = next(it)
            x, y = x.to(device), y.to(device)
            with _autocast(precision, device):
                loss = loss_fn(m(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / steps
    finally:
        _set_rng_state(state)


def _autocast(precision: str, device: torch.device):
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


@dataclass
class _Counters:
    """The loop's running sums, saved with a step-mode checkpoint so that a run resumed
    mid-epoch logs the numbers of an uninterrupted one."""

    loss_sum: float = 0.0  # this epoch so far (summed per-sample losses)
    correct: int = 0
    seen: int = 0
    window_loss: float = 0.0  # since the last "step" record
    window_n: int = 0
    logged_loss: float | None = None  # the last "step" record's train_loss

    def window_mean(self) -> float | None:
        return self.window_loss / self.window_n if self.window_n else self.logged_loss


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    steps_per_epoch: int,
    config: FitConfig,
    run_dir: RunDir,
    reporter,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
    before_epoch: Callable[[nn.Module, int], None] | None = None,
    after_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    extra_state: tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]]
    | None = None,
    step_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    extra_meta: Callable[[], dict[str, Any]] | None = None,
    resume: bool = False,
    device: torch.device | str | None = None,
    label: str = "training",
) -> FitResult:
    """Train `model` for `config.epochs` epochs (continuing from the `last` checkpoint of
    `run_dir` when `resume`); returns the summary. See the module docstring for the contract.

    `evaluate(model)` runs on every rank with the bare (unwrapped) model in eval mode and must
    return the same numbers everywhere. `lr_schedule(step)` multiplies each parameter group's
    initial learning rate. `after_step(model, step)` runs after every optimiser step (EMA);
    `before_epoch(model, epoch)` before each epoch's first step (0-based epoch).
    `after_epoch(model, record)` runs on every rank after each epoch's metrics record is
    logged and its checkpoints are written, with the bare model and that record (1-based
    "epoch", the metrics of `evaluate`); an exception it raises ends `fit` there, with the run
    directory as consistent as after a finished epoch (a hyper-parameter search prunes a trial
    this way, and a caller can measure the model between epochs). Epoch mode only.
    `extra_state` = (get, set) saves and restores a caller's own state (an EMA's weights) with
    the `last` checkpoint. `step_loss(model, x, y)` returns a step's loss in place of
    `loss_fn(model(x), y)` (no training accuracy then; every step weighs the same in the
    logged means, its loss being a mean already). `extra_meta()` adds the caller's fields to
    the `last` checkpoint's JSON (what a reader needs to rebuild the model).
    """
    info = dist.from_env()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if steps_per_epoch < 1:
        raise CnnlabError("no training batches: the training set is smaller than one batch")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    bare = model
    if info.enabled and not isinstance(model, nn.parallel.DistributedDataParallel):
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    steps_mode = config.unit == "steps"

    epoch, step, train_seconds = 0, 0, 0.0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs = 0
    c = _Counters()
    if config.seed is not None:
        torch.manual_seed(config.seed)
    if resume and checkpoints.exists(run_dir.path, LAST):
        ck = checkpoints.load(run_dir.path, LAST)
        bare.load_state_dict(ck.weights)
        st = ck.state or {}
        optimizer.load_state_dict(st["optimizer"])
        _set_rng_state(st["rng"])
        if extra_state is not None and "extra" in st:
            extra_state[1](st["extra"])
        if "counters" in st:
            c = _Counters(**st["counters"])
        epoch, step = int(ck.meta["epoch"]), int(ck.meta["step"])
        train_seconds = float(ck.meta["train_seconds"])
        best, best_epoch = ck.meta.get("best_metric"), ck.meta.get("best_epoch")
        bad_epochs = int(ck.meta.get("bad_epochs", 0))
        if info.is_main:
            # Records after the checkpoint will be logged again; a torn line goes too.
            run_dir.truncate_metrics(lambda r: r.get("step", 0) <= step)
        reporter.log(f"{label}: resuming {run_dir} at step {step} (epoch "
                     f"{step / steps_per_epoch:.2f})" if steps_mode else
                     f"{label}: resuming {run_dir} after epoch {epoch} (step {step})")
        if epoch >= config.epochs or step >= min(steps_per_epoch * config.epochs,
                                                  config.max_steps or step + 1):
            raise CnnlabError(
                f"{run_dir} already trained {epoch} epochs; give a larger --epochs to continue"
            )
    elif resume:
        raise CnnlabError(f"nothing to resume in {run_dir}: it has no {LAST}.json checkpoint")

    kind = "eval" if steps_mode else "epoch"
    history = [r for r in run_dir.read_metrics() if r.get("kind") == kind] if resume else []
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    start = time.monotonic()
    last_save = start
    stopped = "completed"
    last_record: dict[str, Any] = history[-1] if history else {}
    lr = optimizer.param_groups[0]["lr"]

    def elapsed() -> float:
        return train_seconds + time.monotonic() - start

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimiser step on (x, y), its loss added to the running sums."""
        nonlocal step, lr
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if lr_schedule is not None:
            factor = lr_schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        lr = optimizer.param_groups[0]["lr"]
        logits = None
        with _autocast(config.precision, device):
            if step_loss is None:
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            else:
                loss = step_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        checkpoints.crash_point(f"step-{step}")
        if after_step is not None:
            after_step(bare, step)
        n = y.shape[0] if step_loss is None else 1
        batch_loss = float(loss.detach()) * n
        if not info.enabled:
            # One process: stop at the first bad step. Under DDP the ranks must agree, so
            # the check waits for the all-reduced epoch loss.
            _nan_guard(batch_loss, epoch, step, run_dir, label)
        c.loss_sum += batch_loss
        if logits is not None:
            c.correct += accuracy_counts(logits.detach(), y)
        c.seen += n
        c.window_loss += batch_loss
        c.window_n += n
        if step % config.log_every == 0 or (steps_mode and step == total_steps):
            c.logged_loss = c.window_loss / c.window_n
            if info.is_main:
                line = ({"kind": "step", "step": step, "epoch": step / steps_per_epoch,
                         "train_loss": c.logged_loss, "lr": lr, "elapsed_s": round(elapsed(), 3)}
                        if steps_mode else
                        {"kind": "step", "epoch": epoch + 1, "step": step,
                         "train_loss": c.logged_loss, "lr": lr})
                run_dir.append_metrics(line)
            c.window_loss, c.window_n = 0.0, 0

    def save_last() -> None:
        nonlocal last_save
        state = {"optimizer": optimizer.state_dict(), "rng": _rng_state()}
        if extra_state is not None:
            state["extra"] = extra_state[0]()
        if steps_mode:
            state["counters"] = vars(c).copy()
        meta = {"epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps, "train_seconds": elapsed(),
                "best_metric": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "monitor": config.monitor}
        if extra_meta is not None:
            meta = {**extra_meta(), **meta}  # the engine's counters win: resume reads them
        checkpoints.save(run_dir.path, LAST, bare.state_dict(), meta, state)
        last_save = time.monotonic()

    def validate() -> dict[str, float]:
        if evaluate is None:
            return {}
        bare.eval()
        with torch.no_grad(), _autocast(config.precision, device):
            metrics = dict(evaluate(bare))
        bare.train()
        return metrics

    if steps_mode:
        # ----------------------------------------------------------------- step mode
        def run_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            e = epoch
            while e < config.epochs and step < total_steps:
                k = step - e * steps_per_epoch  # > 0 only for a run resumed mid-epoch
                if k == 0 and before_epoch is not None:
                    before_epoch(bare, e)
                yield from itertools.islice(batches(e), k, None)
                e += 1

        model.train()
        bar = reporter.track(run_batches(), total=total_steps - step, description=label,
                             unit="steps")
        try:
            for x, y in bar:
                train_step(x, y)
                end_of_epoch = step % steps_per_epoch == 0
                if end_of_epoch:
                    epoch += 1
                    c.loss_sum, c.correct, c.seen = 0.0, 0, 0
                done = step >= total_steps
                timed_out = _agree(config.time_limit is not None
                                   and time.monotonic() - start >= config.time_limit, device)
                if not (end_of_epoch or done or timed_out or (
                        config.eval_every_steps and step % config.eval_every_steps == 0)):
                    continue
                metrics = validate()
                if metrics:
                    record = {"kind": "eval", "step": step, "epoch": step / steps_per_epoch,
                              **metrics}
                    history.append(record)
                    last_record = record
                    if info.is_main:
                        run_dir.append_metrics(record)
                    reporter.log(f"{label} step {step}: "
                                 + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
                final = done or timed_out
                if info.is_main and (final or time.monotonic() - last_save
                                     >= config.checkpoint_seconds):
                    save_last()
                if end_of_epoch:
                    checkpoints.crash_point(f"epoch-{epoch}:end")
                if timed_out and not done:
                    stopped = "time-limit"
                    reporter.log(f"{label}: stopped at step {step} ({stopped})")
                    break
                if done:
                    break
        finally:
            if hasattr(bar, "close"):
                bar.close()
        return FitResult(epoch, step, stopped, best_epoch, best, elapsed(), last_record,
                         history, train_loss=c.window_mean())

    # --------------------------------------------------------------------- epoch mode
    while epoch < config.epochs and step < total_steps:
        if before_epoch is not None:
            before_epoch(bare, epoch)
        model.train()
        c.loss_sum, c.correct, c.seen, c.window_loss, c.window_n = 0.0, 0, 0, 0.0, 0
        this_epoch = min(steps_per_epoch, total_steps - step)
        for x, y in reporter.track(batches(epoch), total=this_epoch,
                                   description=f"{label} epoch {epoch + 1}/{config.epochs}",
                                   unit="steps"):
            if step >= total_steps:
                break
            train_step(x, y)
        totals = dist.all_reduce_sum(
            torch.tensor([c.loss_sum, c.correct, c.seen], dtype=torch.float64, device=device)
        ).tolist()
        train_loss, train_acc = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)
        _nan_guard(train_loss, epoch, step, run_dir, label)
        epoch += 1
        metrics: dict[str, float] = {}
        last_epoch = epoch >= config.epochs or step >= total_steps
        if last_epoch or epoch % config.eval_every == 0:
            metrics = validate()
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": train_loss,
                  "train_accuracy": train_acc, **metrics, "lr": lr,
                  "elapsed_s": round(elapsed(), 3)}
        history.append(record)
        last_record = record
        improved = False
        if (config.monitor is not None and config.monitor in metrics
                and math.isfinite(metrics[config.monitor])):
            if _better(metrics[config.monitor], best, config.mode):
                best, best_epoch, bad_epochs, improved = metrics[config.monitor], epoch, 0, True
            else:
                bad_epochs += 1
        if info.is_main:
            run_dir.append_metrics(record)
            if improved:
                checkpoints.save(run_dir.path, BEST, bare.state_dict(),
                                 {"epoch": epoch, "step": step, config.monitor: best})
        reporter.log(f"{label} epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}, "
                     f"acc {100 * train_acc:.1f}%"
                     + "".join(f", {k} {_fmt(v)}" for k, v in metrics.items())
                     + f" ({elapsed():.0f} s)")
        early = config.early_stopping and bad_epochs >= config.early_stopping
        timed_out = _agree(config.time_limit is not None
                           and time.monotonic() - start >= config.time_limit, device)
        if early:
            stopped = "early-stopping"
        elif timed_out and epoch < config.epochs and step < total_steps:
            stopped = "time-limit"
        final = epoch >= config.epochs or step >= total_steps or stopped != "completed"
        if info.is_main and (final or epoch % config.checkpoint_every == 0):
            save_last()
        checkpoints.crash_point(f"epoch-{epoch}:end")
        if after_epoch is not None:
            after_epoch(bare, record)
        if stopped != "completed":
            reporter.log(f"{label}: stopped after epoch {epoch} ({stopped})")
            break
    return FitResult(epoch, step, stopped, best_epoch, best, elapsed(), last_record, history)


def _agree(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (rank clocks differ; decisions must not)."""
    return bool(dist.all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _nan_guard(loss: float, epoch: int, step: int, run_dir: RunDir, label: str) -> None:
    """Stop on a NaN/Inf loss, pointing at the last good checkpoint (never overwritten by the
    diverged weights: checkpoints are only written after this check passes)."""
    if math.isfinite(loss):
        return
    where = (f"the last good checkpoint is {run_dir.path / (LAST + '.json')}"
             if checkpoints.exists(run_dir.path, LAST) else "no checkpoint was written yet")
    raise CnnlabError(
        f"{label}: the loss became {loss} in epoch {epoch + 1} (by step {step}); training "
        f"diverged, so it stopped; {where}. Try a lower learning rate, --grad-clip, or fp32"
    )


def load_weights(model: nn.Module, run_dir: str | Any, which: str = BEST) -> dict[str, Any]:
    """Load the `best` (or `last`) weights of a run into `model`; returns the checkpoint JSON."""
    path = getattr(run_dir, "path", run_dir)
    ck = checkpoints.load(path, which, state=False)
    model.load_state_dict(ck.weights)
    return ck.meta
