"""The training engine: the one training loop of every command that trains a model.

    result = fit(model, optimizer, batches, steps_per_epoch, FitConfig(epochs=30),
                 run_dir, reporter, evaluate=validate,
                 lr_schedule=recipes.warmup_cosine(...))

What the caller provides, and what the engine owns:

- the caller builds the model (already on its device), the optimiser, the data and the
  validation function; `batches(epoch)` yields this rank's (x, y) batches of one epoch, in an
  order fixed by (seed, epoch) — `rng.epoch_generator` gives the generator, `dist.shard_indices`
  a rank's share — and the same number of batches on every rank (`steps_per_epoch`);
- the engine runs the steps: learning-rate schedule per step, bf16 autocast when asked
  (hardware.autocast), gradient clipping, a NaN/Inf guard, per-step hooks (EMA), train
  loss/accuracy all-reduced over ranks, validation, `metrics.jsonl`, the `best` (by the
  monitored metric) and `last` checkpoints (`checkpoints.py`: one atomic unit each), early
  stopping, a time limit, and exact resume: weights, optimiser, RNG states (CPU, CUDA, Python,
  NumPy), counters and metrics are restored from `last`, so a run stopped by `kill -9` and
  resumed ends as an uninterrupted run.
- Under torchrun the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU);
  rank 0 alone writes files; every rank reads the checkpoint on resume. One code path: a single
  process is a world of one.

The loop's unit is the step; an epoch is `steps_per_epoch` of them. After a step that is a
*point* (`_Loop`) the loop validates, logs, checkpoints and stops, by one set of rules.
`FitConfig.unit` says only how fine the points are:
- "epochs" (image models): the points are the epoch ends. The time limit is read there, after
  validation; validation runs every `eval_every` epochs and `last` is written every
  `checkpoint_every`, so a resumed run restarts at an epoch boundary with the RNG exactly where
  the original stood. Records: an "epoch" record per epoch (train and validation metrics) and
  "step" records every `log_every` steps; a progress bar per epoch.
- "steps" (charrnn's long epochs of running text): the time limit is read after every step,
  validation also runs every `eval_every_steps` steps, and `last` is written at a point once
  `checkpoint_seconds` have passed since the previous one (and always at the end), so a resumed
  run continues mid-epoch, with the training-loss window not yet logged and the caller's state
  (`extra_state`: an RNN's carried hidden state) as they were. Records: "step" records (every
  `log_every` steps and the last) and "eval" records (each validation); one progress bar.
A `step_loss(model, x, y)` hook replaces `loss_fn(model(x), y)` for models
whose forward is not `logits = model(x)` (an RNN returning its hidden state too).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab import checkpoints, dist
from cnnlab.errors import CnnlabError
from cnnlab.hardware import autocast
from cnnlab.rng import rng_state, set_rng_state
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
    precision: str = "fp32"  # "bf16": autocast matmuls/convs (hardware.resolve_precision)
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
    unit: str = "epochs"  # or "steps": how fine the loop's points are (module docstring)
    eval_every_steps: int = 0  # step unit: steps between validations (0 = at epoch ends only)
    # Seconds between `last` checkpoints, taken at the next point (0 = at
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
            raise CnnlabError("the step unit has no best checkpoint: give monitor=None")
        if self.eval_every_steps < 0 or not self.checkpoint_seconds >= 0:
            raise CnnlabError("eval_every_steps and checkpoint_seconds must be >= 0")
        if self.eval_every_steps and self.unit != "steps":
            raise CnnlabError("eval_every_steps needs unit='steps' (an epoch is the epoch "
                              "unit's smallest point)")


@dataclass
class FitResult:
    epochs_done: int  # completed epochs, over all invocations of a resumed run
    steps: int
    stopped: str  # "completed", "early-stopping" or "time-limit"
    best_epoch: int | None
    best_metric: float | None
    train_seconds: float  # training + validation wall time, summed over invocations
    last: dict[str, Any]  # the last epoch's metrics record (step unit: the last "eval" record)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (or eval)
    # Step unit: the mean training loss of the latest window (the steps since the last "step"
    # record, else that record's).
    train_loss: float | None = None


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor) -> int:
    """Top-1 hits in a batch (targets as class indices, or soft/one-hot rows)."""
    if target.ndim > 1:
        target = target.argmax(dim=1)
    return int((logits.argmax(dim=1) == target).sum())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


@dataclass
class _Counters:
    """The loop's running sums, saved with the `last` checkpoint so that a run resumed
    mid-epoch logs the numbers of an uninterrupted one."""

    loss_sum: float = 0.0  # this epoch so far (summed per-sample losses)
    correct: int = 0
    seen: int = 0
    window_loss: float = 0.0  # since the last "step" record
    window_n: int = 0
    logged_loss: float | None = None  # the last "step" record's train_loss

    def window_mean(self) -> float | None:
        return self.window_loss / self.window_n if self.window_n else self.logged_loss


@dataclass(frozen=True)
class _Hooks:
    """The caller's pieces of the loop: `fit`'s keyword arguments of the same names."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    lr_schedule: Callable[[int], float] | None
    after_step: Callable[[nn.Module, int], None] | None
    before_epoch: Callable[[nn.Module, int], None] | None
    after_epoch: Callable[[nn.Module, dict[str, Any]], None] | None
    extra_state: tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]] | None
    step_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None
    extra_meta: Callable[[], dict[str, Any]] | None


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
    this way, and a caller can measure the model between epochs). Epoch unit only.
    `extra_state` = (get, set) saves and restores a caller's own state (an EMA's weights) with
    the `last` checkpoint. `step_loss(model, x, y)` returns a step's loss in place of
    `loss_fn(model(x), y)` (no training accuracy then; every step weighs the same in the
    logged means, its loss being a mean already). `extra_meta()` adds the caller's fields to
    the `last` checkpoint's JSON (what a reader needs to rebuild the model).
    """
    hooks = _Hooks(loss_fn, evaluate, lr_schedule, after_step, before_epoch, after_epoch,
                   extra_state, step_loss, extra_meta)
    loop = _Loop(model, optimizer, batches, steps_per_epoch, config, run_dir, reporter, hooks,
                 device, label)
    if resume:
        loop.resume()
    return loop.run()


class _Loop:
    """One invocation of `fit`: the position (epoch, step), the running sums and the best
    metric, and the steps that move them.

    The loop runs steps. After each, `_after_step` decides whether the step is a *point*: an
    epoch end (every `steps_per_epoch` steps, or the run's last step), and in the step unit
    also every `eval_every_steps`-th step and a step at which the time limit has passed. At a
    point the loop validates (when due), logs a record, keeps the best checkpoint, writes `last`
    (when due) and stops (when done, early-stopped or out of time). The unit decides only the
    granularity: where the clock is read, which records are logged, and the progress bars.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 steps_per_epoch: int, config: FitConfig, run_dir: RunDir, reporter,
                 hooks: _Hooks, device: torch.device | str | None, label: str) -> None:
        self.info = dist.from_env()
        self.device = (torch.device(device) if device is not None
                       else next(model.parameters()).device)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if steps_per_epoch < 1:
            raise CnnlabError("no training batches: the training set is smaller than one batch")
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.bare = model
        if self.info.enabled and not isinstance(model, nn.parallel.DistributedDataParallel):
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.spe, self.config, self.run_dir, self.reporter = (steps_per_epoch, config, run_dir,
                                                              reporter)
        self.hooks, self.label = hooks, label
        self.steps_unit = config.unit == "steps"
        self.total_steps = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.epoch, self.step, self.train_seconds = 0, 0, 0.0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.c = _Counters()
        self.history: list[dict[str, Any]] = []
        self.last_record: dict[str, Any] = {}
        self.stopped = "completed"
        self.start = self.last_save = time.monotonic()
        self.lr = optimizer.param_groups[0]["lr"]
        if config.seed is not None:
            torch.manual_seed(config.seed)

    def resume(self) -> None:
        """Continue from the `last` checkpoint: weights, optimiser, RNG states, the caller's
        state, the sums and the position; records logged after it are dropped (logged again)."""
        run_dir, config = self.run_dir, self.config
        if not checkpoints.exists(run_dir.path, LAST):
            raise CnnlabError(f"nothing to resume in {run_dir}: it has no {LAST}.json checkpoint")
        ck = checkpoints.load(run_dir.path, LAST)
        self.bare.load_state_dict(ck.weights)
        st = ck.state or {}
        self.optimizer.load_state_dict(st["optimizer"])
        set_rng_state(st["rng"])
        if self.hooks.extra_state is not None and "extra" in st:
            self.hooks.extra_state[1](st["extra"])
        if "counters" in st:
            self.c = _Counters(**st["counters"])
        epoch, step = self.epoch, self.step = int(ck.meta["epoch"]), int(ck.meta["step"])
        self.train_seconds = float(ck.meta["train_seconds"])
        self.best, self.best_epoch = ck.meta.get("best_metric"), ck.meta.get("best_epoch")
        self.bad_epochs = int(ck.meta.get("bad_epochs", 0))
        if self.info.is_main:
            # Records after the checkpoint will be logged again; a torn line goes too.
            run_dir.truncate_metrics(lambda r: r.get("step", 0) <= step)
        self.reporter.log(f"{self.label}: resuming {run_dir} at step {step} (epoch "
                          f"{step / self.spe:.2f})" if self.steps_unit else
                          f"{self.label}: resuming {run_dir} after epoch {epoch} (step {step})")
        if epoch >= config.epochs or step >= min(self.spe * config.epochs,
                                                  config.max_steps or step + 1):
            raise CnnlabError(
                f"{run_dir} already trained {epoch} epochs; give a larger --epochs to continue"
            )
        kind = "eval" if self.steps_unit else "epoch"
        self.history = [r for r in run_dir.read_metrics() if r.get("kind") == kind]
        self.last_record = self.history[-1] if self.history else {}

    def run(self) -> FitResult:
        """Train from the current position until the run is done, early-stopped or out of time.
        One progress bar per epoch (epoch unit) or for the whole run (step unit: an epoch of
        running text can be a single step); a point inside a bar is handled after its step,
        the bar's last step after the bar has closed."""
        self.start = self.last_save = time.monotonic()
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        while self.step < self.total_steps and self.stopped == "completed":
            if self.steps_unit:
                end, description = self.total_steps, self.label
            else:
                end = min((self.epoch + 1) * self.spe, self.total_steps)
                description = f"{self.label} epoch {self.epoch + 1}/{self.config.epochs}"
            bar = self.reporter.track(self._batches(end - self.step), total=end - self.step,
                                      description=description, unit="steps")
            try:
                for x, y in bar:
                    self._train_step(x, y)
                    if self.step < end and self._after_step():
                        break
            finally:
                if hasattr(bar, "close"):
                    bar.close()
            if self.step == end:
                self._after_step()
        return FitResult(self.epoch, self.step, self.stopped, self.best_epoch, self.best,
                         self._elapsed(), self.last_record, self.history,
                         train_loss=self.c.window_mean() if self.steps_unit else None)

    def _elapsed(self) -> float:
        return self.train_seconds + time.monotonic() - self.start

    def _batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The run's next `n` batches, across epoch ends: each epoch begins with `_start_epoch`;
        a run resumed mid-epoch skips the batches it has done. An epoch's iterator is read to
        its end (a DataLoader shuts its workers down there); a run cut short mid-epoch by
        `max_steps` draws one batch past its last."""
        while True:
            epoch = self.epoch
            k = self.step - epoch * self.spe  # > 0 only in a run resumed mid-epoch
            if k == 0:
                self._start_epoch()
            for batch in itertools.islice(self.batches(epoch), k, None):
                if n == 0:
                    return
                yield batch
                n -= 1
            if n == 0:
                return
            if self.epoch == epoch:  # a bug in the caller: the loop would not move on
                raise RuntimeError(f"batches({epoch}) ended after {self.step - epoch * self.spe}"
                                   f" of its steps_per_epoch = {self.spe} batches")

    def _start_epoch(self) -> None:
        if self.hooks.before_epoch is not None:
            self.hooks.before_epoch(self.bare, self.epoch)
        self.model.train()
        self.c.loss_sum, self.c.correct, self.c.seen = 0.0, 0, 0
        if not self.steps_unit:
            # An epoch's "step" records average from the epoch's start; the step unit's run on
            # over epoch ends (an epoch of text can be shorter than log_every).
            self.c.window_loss, self.c.window_n = 0.0, 0

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimiser step on (x, y), its loss added to the running sums."""
        hooks, optimizer, c = self.hooks, self.optimizer, self.c
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if hooks.lr_schedule is not None:
            factor = hooks.lr_schedule(self.step)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        self.lr = optimizer.param_groups[0]["lr"]
        logits = None
        with autocast(self.config.precision, self.device):
            if hooks.step_loss is None:
                logits = self.model(x)
                loss = hooks.loss_fn(logits.float(), y)
            else:
                loss = hooks.step_loss(self.model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        optimizer.step()
        self.step += 1
        checkpoints.crash_point(f"step-{self.step}")
        if hooks.after_step is not None:
            hooks.after_step(self.bare, self.step)
        n = y.shape[0] if hooks.step_loss is None else 1
        batch_loss = float(loss.detach()) * n
        if not self.info.enabled:
            # One process: stop at the first bad step. Under DDP the ranks must agree, so
            # the check waits for the all-reduced epoch loss.
            _nan_guard(batch_loss, self.epoch, self.step, self.run_dir, self.label)
        c.loss_sum += batch_loss
        if logits is not None:
            c.correct += accuracy_counts(logits.detach(), y)
        c.seen += n
        c.window_loss += batch_loss
        c.window_n += n
        if self.step % self.config.log_every == 0 or (
                self.steps_unit and self.step == self.total_steps):
            self._log_window()

    def _log_window(self) -> None:
        """A "step" record: the mean training loss since the previous one."""
        c, step = self.c, self.step
        c.logged_loss = c.window_loss / c.window_n
        if self.info.is_main:
            line = ({"kind": "step", "step": step, "epoch": step / self.spe,
                     "train_loss": c.logged_loss, "lr": self.lr,
                     "elapsed_s": round(self._elapsed(), 3)}
                    if self.steps_unit else
                    {"kind": "step", "epoch": self.epoch + 1, "step": step,
                     "train_loss": c.logged_loss, "lr": self.lr})
            self.run_dir.append_metrics(line)
        c.window_loss, c.window_n = 0.0, 0

    def _after_step(self) -> bool:
        """Handle the step just taken if it is a point (class docstring); True: the run ends."""
        config, step = self.config, self.step
        epoch_end = step % self.spe == 0 or step == self.total_steps
        if not (epoch_end or self.steps_unit):
            return False
        train = self._end_epoch() if epoch_end else {}
        done = step >= self.total_steps
        # The step unit reads the clock after every step, the epoch unit at epoch ends after
        # validation; a collective under DDP, so that every rank decides alike.
        timed_out = self.steps_unit and self._past_time_limit()
        every = config.eval_every_steps and step % config.eval_every_steps == 0
        if not (epoch_end or done or timed_out or every):
            return False
        if (done or every or (timed_out and not epoch_end)
                or (epoch_end and self.epoch % config.eval_every == 0)):
            metrics = self._validate()
        else:
            metrics = {}
        if not self.steps_unit:
            timed_out = self._past_time_limit()
        record = self._record(train, metrics)
        if config.early_stopping and self.bad_epochs >= config.early_stopping:
            self.stopped = "early-stopping"
        elif timed_out and not done:
            self.stopped = "time-limit"
        final = done or self.stopped != "completed"
        if self.info.is_main and (final or self._checkpoint_due(epoch_end)):
            self._save_last()
        if epoch_end:
            checkpoints.crash_point(f"epoch-{self.epoch}:end")
        if epoch_end and record is not None and self.hooks.after_epoch is not None:
            self.hooks.after_epoch(self.bare, record)
        if self.stopped != "completed":
            where = f"at step {step}" if self.steps_unit else f"after epoch {self.epoch}"
            self.reporter.log(f"{self.label}: stopped {where} ({self.stopped})")
        return final

    def _end_epoch(self) -> dict[str, float]:
        """Close an epoch: its training loss and accuracy all-reduced over ranks (the NaN guard
        under DDP), the epoch counted."""
        c = self.c
        totals = dist.all_reduce_sum(
            torch.tensor([c.loss_sum, c.correct, c.seen], dtype=torch.float64,
                         device=self.device)
        ).tolist()
        train_loss, train_acc = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)
        _nan_guard(train_loss, self.epoch, self.step, self.run_dir, self.label)
        self.epoch += 1
        return {"train_loss": train_loss, "train_accuracy": train_acc}

    def _past_time_limit(self) -> bool:
        limit = self.config.time_limit
        return _agree(limit is not None and time.monotonic() - self.start >= limit, self.device)

    def _validate(self) -> dict[str, float]:
        if self.hooks.evaluate is None:
            return {}
        self.bare.eval()
        with torch.no_grad(), autocast(self.config.precision, self.device):
            metrics = dict(self.hooks.evaluate(self.bare))
        self.bare.train()
        return metrics

    def _record(self, train: dict[str, float], metrics: dict[str, float]
                ) -> dict[str, Any] | None:
        """Log the point's record: an "epoch" record at each epoch end (epoch unit), an "eval"
        record at each validation (step unit); the best checkpoint follows the monitor."""
        label, step = self.label, self.step
        if self.steps_unit:
            if not metrics:
                return None
            record = {"kind": "eval", "step": step, "epoch": step / self.spe, **metrics}
            line = f"{label} step {step}: " + ", ".join(f"{k} {_fmt(v)}"
                                                       for k, v in metrics.items())
        else:
            record = {"kind": "epoch", "epoch": self.epoch, "step": step, **train, **metrics,
                      "lr": self.lr, "elapsed_s": round(self._elapsed(), 3)}
            line = (f"{label} epoch {self.epoch}/{self.config.epochs}: train loss "
                    f"{train['train_loss']:.4f}, acc {100 * train['train_accuracy']:.1f}%"
                    + "".join(f", {k} {_fmt(v)}" for k, v in metrics.items())
                    + f" ({self._elapsed():.0f} s)")
        self.history.append(record)
        self.last_record = record
        improved = self._track_best(metrics)
        if self.info.is_main:
            self.run_dir.append_metrics(record)
            if improved:
                checkpoints.save(self.run_dir.path, BEST, self.bare.state_dict(),
                                 {"epoch": self.epoch, "step": step,
                                  self.config.monitor: self.best})
        self.reporter.log(line)
        return record

    def _track_best(self, metrics: dict[str, float]) -> bool:
        """Whether the monitored metric improved (counting the validations that did not)."""
        monitor = self.config.monitor
        if monitor is None or monitor not in metrics or not math.isfinite(metrics[monitor]):
            return False
        if _better(metrics[monitor], self.best, self.config.mode):
            self.best, self.best_epoch, self.bad_epochs = metrics[monitor], self.epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def _checkpoint_due(self, epoch_end: bool) -> bool:
        """`last` is written every `checkpoint_every` epochs and at most every
        `checkpoint_seconds` (the final point always)."""
        config = self.config
        return (time.monotonic() - self.last_save >= config.checkpoint_seconds
                and (not epoch_end or self.epoch % config.checkpoint_every == 0))

    def _save_last(self) -> None:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                                 "counters": vars(self.c).copy()}
        if self.hooks.extra_state is not None:
            state["extra"] = self.hooks.extra_state[0]()
        meta = {"epoch": self.epoch, "step": self.step, "steps_per_epoch": self.spe,
                "total_steps": self.total_steps, "train_seconds": self._elapsed(),
                "best_metric": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "monitor": self.config.monitor}
        if self.hooks.extra_meta is not None:
            meta = {**self.hooks.extra_meta(), **meta}  # the engine's counters win: resume reads
        checkpoints.save(self.run_dir.path, LAST, self.bare.state_dict(), meta, state)
        self.last_save = time.monotonic()


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
