"""A setting's seed trials trained together as one batched model (`cnnlab.batched`, issue 25):
k seeds of one net (own initialisation, batches, optimiser state, BatchNorm statistics) as
one grouped-conv model, so that each kernel does k nets' work. Each trial is recorded exactly
as when it trains alone (`cnnlab train`'s run: its folder, config.json, environment.json,
metrics.jsonl, results.json, the `last` weights; the same study attributes through
record.trial_attrs), its numbers equal to the one-at-a-time run's within float rounding
(tests/test_experiment_together.py).

Where it pays (`TOGETHER`, BENCHMARKS.md "Seeds trained together"): the residual study's tiny
deep nets (plain/ResNet-20/56 at 8-16-32 filters on 16x16), about 1.3-1.5x per step on one
thread; the 4-layer plain-cnn at 32x32 (filters, pooling) does not gain (0.87-1.03x) and
trains alone; the depth study as measured there.

Differences from a trial trained alone, none of them in its numbers: a trial's seconds
(train_seconds, eval_seconds, the study's "seconds") are its share of its group's, the group's
divided by k; `last` holds the trained weights without the optimiser state (a trial is never
resumed from it: a trial whose process died runs again from the start); a non-finite loss is
found at the end of the epoch, where the engine finds it at the step, and fails that trial
alone.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.learning import conv_grad_norms, fixed_batch
from cnnlab.tasks.experiment.record import trial_attrs, trial_params

# The studies whose seeds train together (the rest one net at a time), and at most how many
# nets one batched model holds (memory grows with k; the measured gains level off by 6).
TOGETHER = frozenset({"residual"})
MAX_TOGETHER = 8


def seeds_together(name: str, config: ExperimentConfig) -> int:
    """How many seeds of one setting of study `name` train as one model (1: alone)."""
    if not config.together or name not in TOGETHER:
        return 1
    return max(1, min(MAX_TOGETHER, config.seeds))


def setting_of(user_attrs: dict[str, Any]) -> Any:
    """A queued trial's setting (its plan entry without the seed): the trials trained together
    share it. A trial queued without a plan entry (an older run's) is a setting of its own."""
    import json

    from cnnlab.tasks.study import PLAN, plan_key

    if PLAN not in user_attrs:
        return object()
    params = json.loads(user_attrs[PLAN])
    params.pop("seed", None)
    return plan_key(params)


def batchable(cfg, recipe) -> bool:
    """Whether a trial's run is one the batched loop reproduces: one process, no budget of
    its own, no validation split, no lookahead/whitening/test-time augmentation (each would
    couple the nets or need the engine's own hooks)."""
    from cnnlab import dist

    return (not dist.from_env().enabled and not cfg.budget and not cfg.val_fraction
            and cfg.test and not recipe.lookahead and not recipe.whiten_images
            and recipe.tta == "none")


def group_objective(g, base, reporter, data, time_left: Callable[[], float | None],
                    grad_batch: int, one):
    """The study machinery's group objective (study.run_study_groups): the trials of one
    setting, trained together; one trial alone (or a run the batched loop does not
    reproduce) goes to `one`, the one-at-a-time objective."""
    from dataclasses import replace

    from cnnlab.tasks import sweep, train

    def alone(trials) -> list:
        out = []
        for t in trials:
            try:
                out.append(one(t))
            except Exception as exc:
                out.append(exc)
        return out

    def run_group(trials) -> list:
        if len(trials) == 1:
            return alone(trials)
        cfgs = [sweep.trial_config(base, trial_params(g, t.optuna_trial)) for t in trials]
        left = time_left()
        if left is not None:
            cfgs = [replace(c, time_limit=max(1.0, left)) for c in cfgs]
        if not batchable(cfgs[0], train.recipe_for(cfgs[0], cfgs[0].models[0])):
            return alone(trials)
        trial_data = data.get(cfgs[0])
        xy = None
        if g.name == "residual":
            xy = fixed_batch(trial_data, train.recipe_for(cfgs[0], cfgs[0].models[0]),
                             grad_batch)
        label = f"{cfgs[0].models[0]} seeds {', '.join(str(c.seed) for c in cfgs)}"
        results = train_together(cfgs, [t.run_dir for t in trials], trial_data,
                                 trials[0].reporter or reporter, xy, label)
        out: list = []
        for t, res in zip(trials, results, strict=True):
            if isinstance(res, Exception):
                out.append(res)
                continue
            res, grads = res
            value, attrs = trial_attrs(g.name, res, t.run_dir, len(trial_data.classes))
            out.append((value, {**grads, **attrs}))
        return out

    return run_group


def train_together(cfgs, run_dirs: list[RunDir], data, reporter, xy, label: str) -> list:
    """Train the k trials `cfgs` (one net, one recipe, k seeds) as one batched model into
    their `run_dirs`, as `cnnlab train` trains each; per trial ((its train results, its
    gradient-norm attributes) or the exception that failed it). `xy`: the residual study's
    fixed batch of the gradient norms (None: none measured)."""
    import torch

    from cnnlab import dist, recipes
    from cnnlab.batched import BatchedNets
    from cnnlab.data.tensor_batches import num_batches
    from cnnlab.tasks.train import precision_for, recipe_for
    from cnnlab.tasks.train.build import build

    cfg, model_name = cfgs[0], cfgs[0].models[0]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _, device = dist.init(cfg.device)
    recipe = recipe_for(cfg, model_name)
    precision, why = precision_for(cfg, recipe, device)
    reporter.log(f"data: {data.describe()}")
    built = [build(recipe, data, model_name, c.seed, device) for c in cfgs]
    models = [m for m, _, _ in built]
    grads: list[dict[str, Any]] = [{} for _ in cfgs]
    if xy is not None:  # the very nets training starts from
        for j, m in enumerate(models):
            grads[j]["metric_grad_init"] = conv_grad_norms(m, *xy)
    spe = num_batches(len(data.train_y), recipe.batch_size, 1)
    total = max(1, math.ceil(recipe.epochs * spe))
    nets = BatchedNets.from_models(models, lambda m: recipes.make_optimizer(recipe, m),
                                   lr_schedule=recipes.lr_lambda(recipe.schedule, total),
                                   precision=precision, label_smoothing=recipe.label_smoothing)
    subs = _start_runs(cfgs, run_dirs, model_name, recipe, device, precision, why)

    def after_epoch(epoch: int) -> None:
        if xy is not None and epoch == 1:
            for j, m in enumerate(nets.unstack()):
                grads[j]["metric_grad_epoch1"] = conv_grad_norms(m, *xy)

    loop = _Loop(nets, [b for _, b, _ in built], spe, total, cfg, subs, reporter, label,
                 _evaluator(cfg, data, recipe, precision, device), after_epoch,
                 [c.seed for c in cfgs])
    loop.run(math.ceil(recipe.epochs))
    return _finish(cfgs, run_dirs, subs, loop, data, recipe, precision, why, device, grads)


def _start_runs(cfgs, run_dirs, model_name, recipe, device, precision, why) -> list[RunDir]:
    """Each trial's run folder and its net's sub-folder, with the config and environment
    files `cnnlab train` writes there."""
    from cnnlab.models.registry import get_spec

    subs = []
    for c, run_dir in zip(cfgs, run_dirs, strict=True):
        run_dir.save_config(c)
        run_dir.save_environment(seed=c.seed, device=str(device))
        sub = RunDir(run_dir.path / f"{get_spec(model_name).name}-seed{c.seed}")
        sub.path.mkdir(parents=True, exist_ok=True)
        sub.save_config({"train": c, "model": model_name, "seed": c.seed, "recipe": recipe})
        sub.save_environment(seed=c.seed, device=str(device), precision=precision,
                             precision_reason=why)
        subs.append(sub)
    return subs


def batched_accuracy(nets, x, y, mean, std, device):
    """(accuracies [k], mean cross-entropies [k]) of the k nets on the same uint8 images, as
    train.accuracy measures one net (batches of EVAL_BATCH, eval mode)."""
    import torch
    from torch.nn import functional as F

    from cnnlab.data.tensor_batches import normalize
    from cnnlab.tasks.train import EVAL_BATCH

    k = nets.k
    nets.eval()
    hits = torch.zeros(k, dtype=torch.int64)
    loss = torch.zeros(k, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            xb = normalize(x[start: start + EVAL_BATCH], mean, std).to(device)
            yb = y[start: start + EVAL_BATCH].to(device)
            logits = nets(xb.unsqueeze(0).expand(k, *xb.shape)).float()  # [k, B, classes]
            hits += (logits.argmax(-1) == yb).sum(1).cpu()
            loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(k),
                                    reduction="none").view(k, -1).sum(1).double().cpu()
    return (hits.double() / len(x)).tolist(), (loss / len(x)).tolist()


def _evaluator(cfg, data, recipe, precision: str, device):
    """Per-epoch metrics of the k nets: accuracy and loss on the fixed sample of training
    images (`train_eval`) and the test set (the per-epoch curve, unless `test_curve` is off),
    under the run's autocast, as train.one's evaluator measures each net."""
    import torch

    from cnnlab.hardware import autocast
    from cnnlab.tasks.train.data import norm

    mean, std = norm(recipe, data)
    idx = None
    if cfg.train_eval:
        from cnnlab.data.cifar import stratified_indices

        per_class = max(1, cfg.train_eval // data.num_classes)
        counts = torch.bincount(data.train_y)
        idx = stratified_indices(data.train_y, seed=0,
                                 per_class=min(per_class, int(counts[counts > 0].min())))

    def evaluate(nets) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in range(nets.k)]
        with autocast(precision, device):
            if idx is not None:
                acc, loss = batched_accuracy(nets, data.train_x[idx], data.train_y[idx], mean,
                                             std, device)
                for j in range(nets.k):
                    out[j].update(train_eval_accuracy=acc[j], train_eval_loss=loss[j])
            if cfg.test_curve:
                acc, loss = batched_accuracy(nets, data.test_x, data.test_y, mean, std, device)
                for j in range(nets.k):
                    out[j].update(test_accuracy=acc[j], test_loss=loss[j])
        nets.train()
        return out

    return evaluate


class _Loop:
    """engine.fit's epoch loop as train_one configures it, for k nets in lockstep: a "step"
    record (each net's mean training loss of the window) every quarter epoch, an "epoch"
    record per epoch with the evaluation every `eval_every` epochs and after the last step,
    the time limit read after each epoch's evaluation."""

    def __init__(self, nets, batch_fns, spe: int, total: int, cfg, subs: list[RunDir],
                 reporter, label: str, evaluate, after_epoch: Callable[[int], None],
                 seeds: list[int]):
        self.seeds = seeds
        self.nets, self.batch_fns, self.spe, self.total = nets, batch_fns, spe, total
        self.cfg, self.subs, self.reporter, self.label = cfg, subs, reporter, label
        self.evaluate, self.after_epoch = evaluate, after_epoch
        self.step = self.epoch = 0
        self.stopped = "completed"
        self.history: list[list[dict[str, Any]]] = [[] for _ in subs]
        self.failed: list[Exception | None] = [None] * len(subs)
        self.seconds = 0.0  # training and evaluation, the group's wall time
        self.lr = 0.0

    def run(self, epochs: int) -> None:
        import torch

        from cnnlab.batched import stack_batches

        start = time.monotonic()
        k, log_every = self.nets.k, max(1, self.spe // 4)
        device = next(self.nets.net.parameters()).device
        while self.step < self.total and self.stopped == "completed":
            end = min((self.epoch + 1) * self.spe, self.total)
            loss_sum = torch.zeros(k, dtype=torch.float64)
            correct = torch.zeros(k, dtype=torch.int64)
            window = torch.zeros(k, dtype=torch.float64)
            seen = window_n = 0
            self.nets.train()
            batches = stack_batches([b(self.epoch) for b in self.batch_fns])
            bar = self.reporter.track(itertools.islice(batches, end - self.step),
                                      total=end - self.step, unit="steps",
                                      description=f"{self.label} epoch {self.epoch + 1}/"
                                                  f"{epochs}")
            try:
                for x, y in bar:
                    losses = self.nets.step(x.to(device), y.to(device)).double().cpu()
                    self.lr = self.nets.optimizer.param_groups[0]["lr"]
                    self.step += 1
                    n = y.shape[1]
                    loss_sum += losses * n
                    window += losses * n
                    correct += self.nets.last_correct.cpu()
                    seen += n
                    window_n += n
                    if self.step % log_every == 0:
                        self._log(lambda j, w=window / window_n: {
                            "kind": "step", "epoch": self.epoch + 1, "step": self.step,
                            "train_loss": float(w[j]), "lr": self.lr})
                        window.zero_()
                        window_n = 0
            finally:
                if hasattr(bar, "close"):
                    bar.close()
            self._end_epoch(epochs, loss_sum / max(seen, 1), correct / max(seen, 1), start)
        self.seconds = time.monotonic() - start

    def _log(self, record: Callable[[int], dict[str, Any]]) -> None:
        for j, sub in enumerate(self.subs):
            if self.failed[j] is None:
                sub.append_metrics(record(j))

    def _end_epoch(self, epochs: int, train_loss, train_acc, start: float) -> None:
        for j in range(self.nets.k):
            if self.failed[j] is None and not math.isfinite(float(train_loss[j])):
                self.failed[j] = CnnlabError(
                    f"{self.cfg.models[0]} seed {self.seeds[j]}: the loss became "
                    f"{float(train_loss[j])} in epoch {self.epoch + 1} (by step {self.step}); "
                    "training diverged, so it stopped. Try a lower learning rate or fp32")
        self.epoch += 1
        done = self.step >= self.total
        metrics = (self.evaluate(self.nets) if done or self.epoch % self.cfg.eval_every == 0
                   else [{} for _ in self.subs])
        limit = self.cfg.time_limit
        if limit is not None and not done and time.monotonic() - start >= limit:
            self.stopped = "time-limit"
        elapsed = round(time.monotonic() - start, 3)
        records = [{"kind": "epoch", "epoch": self.epoch, "step": self.step,
                    "train_loss": float(train_loss[j]), "train_accuracy": float(train_acc[j]),
                    **metrics[j], "lr": self.lr, "elapsed_s": elapsed}
                   for j in range(self.nets.k)]
        for j, r in enumerate(records):
            self.history[j].append(r)
        self._log(lambda j: records[j])
        self.reporter.log(f"{self.label} epoch {self.epoch}/{epochs}: train loss "
                          + " / ".join(f"{float(v):.4f}" for v in train_loss)
                          + f" ({elapsed:.0f} s)")
        self.after_epoch(self.epoch)
        if self.stopped != "completed":
            self.reporter.log(f"{self.label}: stopped after epoch {self.epoch} "
                              f"({self.stopped})")


def _finish(cfgs, run_dirs: list[RunDir], subs: list[RunDir], loop: _Loop, data, recipe,
            precision: str, why: str, device, grads: list[dict[str, Any]]) -> list:
    """The test set measured once on every net's final weights; each trial's results.json
    (its net's and its run's, as train_one and train.run write them) and `last` weights."""
    from cnnlab import checkpoints
    from cnnlab.hardware import autocast
    from cnnlab.models.registry import count_parameters
    from cnnlab.tasks.train.build import macs_of
    from cnnlab.tasks.train.data import norm
    from cnnlab.tasks.train.summary import summarise

    k, model_name = len(cfgs), cfgs[0].models[0]
    start = time.monotonic()
    last = [h[-1] if h else {} for h in loop.history]
    if all(r.get("test_accuracy") is not None for r in last):  # the last evaluation's
        tests = [(r["test_accuracy"], r["test_loss"]) for r in last]
    else:
        mean, std = norm(recipe, data)
        with autocast(precision, device):
            tests = list(zip(*batched_accuracy(loop.nets, data.test_x, data.test_y, mean, std,
                                               device), strict=True))
    eval_seconds = (time.monotonic() - start) / k
    options = dict(recipe.model_options)
    options.setdefault("num_classes", data.num_classes)
    macs = macs_of(model_name, options, tuple(data.image_shape))
    share = loop.seconds / k  # each trial's share of the group's seconds
    out: list = []
    for j, net in enumerate(loop.nets.unstack()):
        if loop.failed[j] is not None:
            out.append(loop.failed[j])
            continue
        row = _row(cfgs[j], recipe, last[j], tests[j], loop, share, eval_seconds,
                   count_parameters(net), precision, why, data)
        subs[j].save_results(row)
        checkpoints.save(subs[j].path, "last", net.state_dict(), {
            "epoch": loop.epoch, "step": loop.step, "steps_per_epoch": loop.spe,
            "total_steps": loop.total, "train_seconds": share, "best_metric": None,
            "best_epoch": None, "bad_epochs": 0, "monitor": "val_accuracy"})
        results = {
            "data": data.source, "n_train": len(data.train_y), "n_test": len(data.test_y),
            "n_val": 0, "classes": list(data.classes), "world_size": 1, "device": str(device),
            "models": summarise([row], {model_name: macs}), "runs": [row],
            "budget_minutes": cfgs[j].budget, "calibration": [], "batches": []}
        run_dirs[j].save_results(results)
        results["run_dir"] = str(run_dirs[j].path)
        out.append((results, grads[j]))
    return out


def _row(cfg, recipe, record: dict[str, Any], test: tuple[float, float], loop: _Loop,
         share: float, eval_seconds: float, params: int, precision: str, why: str, data
         ) -> dict[str, Any]:
    """One net's results.json, train_one's fields."""
    return {
        "model": cfg.models[0], "seed": cfg.seed, "recipe": recipe.name,
        "lr": recipe.lr, "batch_size": recipe.batch_size,
        "test_accuracy": test[0], "test_loss": test[1], "tta": recipe.tta,
        "tested_epoch": loop.epoch, "tested_checkpoint": "last",
        "test_accuracy_no_tta": record.get("test_accuracy"),
        "val_accuracy": record.get("val_accuracy"),
        "train_eval_accuracy": record.get("train_eval_accuracy"),
        "train_eval_loss": record.get("train_eval_loss"),
        "best_val_accuracy": None, "best_epoch": None,
        "epochs": loop.epoch, "steps": loop.step, "stopped": loop.stopped,
        "train_seconds": share, "eval_seconds": eval_seconds, "budget_seconds": None,
        "planned_steps": loop.total, "shape": None,
        "images_per_second": loop.step * recipe.batch_size / share if share else None,
        "params": params, "precision": precision, "precision_reason": why,
        "n_train": len(data.train_y), "n_test": len(data.test_y), "world_size": 1,
        "together": loop.nets.k,
    }
