"""What a trial measures besides its accuracy: whether it had stopped learning
(`plateau_share`, `still_learning`; for a setting over its seeds, the doubling test
`doubling_test`), and the residual study's per-layer gradient norms on one fixed batch
(`conv_grad_norms`, `fixed_batch`)."""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any

from cnnlab.analysis import stats
from cnnlab.tasks.experiment.designs import GRAD_BATCH

# A trial "had stopped learning" when less than this share of its training-loss drop came in
# its last quarter of steps. With a schedule that anneals to zero some drop always comes last;
# the nets of the default designs end at 0.02-0.10, a net stopped halfway at 0.25-0.40.
PLATEAU_SHARE = 0.15
CHANCE_MARGIN = 0.10  # ... and its training accuracy is at least 10 points above chance


def conv_grad_norms(model, x, y) -> list[float]:
    """L2 norm of the loss gradient of every conv weight, in forward order, for one batch in
    training mode (BatchNorm on batch statistics, as in training), computed on a copy so that
    the model and its running statistics stay as they were. fp32, no autocast."""
    import torch
    from torch import nn

    m = copy.deepcopy(model).float().train()
    m.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    return [float(mod.weight.grad.norm()) for mod in m.modules()
            if isinstance(mod, nn.Conv2d) and mod.weight.grad is not None]


# The floor of a gradient norm on a log scale. The norms are computed in fp32, where a norm
# that is not 0 is at least the smallest positive (subnormal) float32, 2**-149 ~ 1.4e-45; a
# norm of exactly 0 (every gradient of the layer underflowed or died: the vanishing case the
# residual study exists to measure) is counted as that value. Not -inf, which would turn the
# seeds' mean and Welch interval into nan; not left out, which would drop exactly the seeds
# that show the vanishing. So 0 reads as log10 = -44.85, below any norm fp32 can hold, and one
# such seed among others widens the interval rather than deciding it alone.
GRAD_FLOOR = 2.0 ** -149


def log10_norm(norm: float, floor: float = GRAD_FLOOR) -> float:
    """log10 of a gradient norm, a norm of 0 (or below the floor) read as `floor`."""
    return math.log10(max(norm, floor))


def fixed_batch(data, recipe, size: int = GRAD_BATCH) -> tuple[Any, Any]:
    """`size` training images drawn at random with a fixed seed (the files are sorted by
    class, so the first ones would all be one class), normalised as training normalises them:
    the same batch for every net."""
    import torch

    from cnnlab.data.tensor_batches import normalize

    mean, std = ((0.5,) * 3, (0.5,) * 3) if recipe.normalization == "half" else (data.mean,
                                                                                   data.std)
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    idx = idx[:size]
    return normalize(data.train_x[idx], mean, std, channels_last=False), data.train_y[idx]



def plateau_share(losses: list[float]) -> float | None:
    """The share of a run's training-loss drop that came in its last quarter of steps: (mean
    loss of the third quarter - mean of the last quarter) / (first logged loss - mean of the
    last quarter). Near 0: the loss had flattened; large: it was still falling. None when too
    few points were logged or the loss never fell."""
    n = len(losses)
    if n < 8:
        return None
    third = statistics.fmean(losses[n // 2: 3 * n // 4])
    last = statistics.fmean(losses[3 * n // 4:])
    total = losses[0] - last
    if total <= 0:
        return None
    return (third - last) / total


def still_learning(share: float | None, train_accuracy: float | None, classes: int) -> bool:
    """Whether a trial had not finished learning: its loss still falling at the end
    (PLATEAU_SHARE), or its training accuracy barely above chance (a net that never started
    also has a flat loss)."""
    if share is None or share > PLATEAU_SHARE:
        return True
    return train_accuracy is not None and train_accuracy < 1 / classes + CHANCE_MARGIN


# The doubling test needs an interval of the seeds' own changes: with two seeds a t interval
# has 1 degree of freedom (12.7 x the spread) and would call almost anything "within the noise".
DOUBLING_SEEDS = 3
PLATEAUED, LEARNING, AT_CHANCE, UNKNOWN = "plateaued", "still learning", "at chance", "unknown"


@dataclass(frozen=True)
class Plateau:
    """A setting's doubling test: its training error (points) at S steps minus at 2S, paired
    by seed along each seed's own curve, with the 95% t interval of that drop."""

    status: str  # PLATEAUED, LEARNING, AT_CHANCE or UNKNOWN
    half_step: int | None = None  # S
    end_step: int | None = None  # 2S
    drop: stats.Interval | None = None  # error at S minus error at 2S, points
    final_error: float | None = None  # mean over seeds at 2S, percent
    seeds: int = 0

    def text(self) -> str:
        """'plateaued: error 45.1% at 2,000 steps, -0.4 points from 1,000 (95% CI ...)'."""
        if self.status == UNKNOWN:
            return (f"unknown ({self.seeds} seed{'s' if self.seeds != 1 else ''} with curves; "
                    f"the doubling test needs {DOUBLING_SEEDS})")
        change = "" if self.drop is None else (
            f", {-self.drop.estimate:+.1f} points from step {self.half_step:,} (95% CI "
            f"{-self.drop.high:+.1f} to {-self.drop.low:+.1f})")
        return (f"{self.status}: training error {self.final_error:.1f}% at step "
                f"{self.end_step:,}{change}")

    def as_dict(self) -> dict[str, Any]:
        iv = self.drop
        return {"status": self.status, "half_step": self.half_step, "end_step": self.end_step,
                "final_error": self.final_error, "seeds": self.seeds, "text": self.text(),
                "drop": None if iv is None else {"estimate": iv.estimate, "low": iv.low,
                                                 "high": iv.high}}


def doubling_test(curves: list[list[list[Any]]], classes: int) -> Plateau:
    """Had this setting reached its plateau? He et al.'s claim is about training error at the
    plateau, so: the training error at the run's last step 2S against at its middle S, each
    seed against itself (a paired t interval over the seeds). Plateaued when doubling the steps
    from S to 2S lowered the error by no more than the seed noise (the interval of the drop
    reaches zero or below), still learning when the drop lies above zero, at chance when the
    mean training accuracy at 2S is within CHANCE_MARGIN of chance (a net that never started
    is flat too: `plateau_share` read such a plain-56 as "stopped"). Read inside one run, so
    the design's schedule must run S..2S at one learning rate: one that anneals to zero makes
    every run drop at its end and read "still learning" (never a false plateau).

    `curves`: per seed, [step, training accuracy as a fraction, ...] points (`metric_curve`)."""
    pairs, final, half, end = [], [], None, None
    for curve in curves:
        pts = [(int(p[0]), 100 * (1 - p[1])) for p in curve or [] if p[1] is not None]
        if len(pts) < 2:
            continue
        end = pts[-1][0]
        # the logged point nearest S = 2S / 2 (per-epoch points: exact for an even count)
        s_step, s_err = min(pts[:-1], key=lambda p: abs(p[0] - end / 2))
        half = s_step
        pairs.append(s_err - pts[-1][1])
        final.append(pts[-1][1])
    if len(pairs) < DOUBLING_SEEDS:
        return Plateau(UNKNOWN, seeds=len(pairs))
    drop = stats.mean_interval(pairs)
    mean_final = statistics.fmean(final)
    if 100 - mean_final < 100 * (1 / classes + CHANCE_MARGIN):
        status = AT_CHANCE
    elif drop.zero_spread:  # every seed changed by exactly the same: no noise to be within
        status = LEARNING if drop.estimate > 0 else PLATEAUED
    else:
        status = LEARNING if drop.low > 0 else PLATEAUED
    return Plateau(status, half, end, drop, mean_final, len(pairs))


def error_band(curves: list[list[list[Any]]]) -> dict[str, list[float]] | None:
    """Training error (percent) against steps over the seeds: the mean and its 95% t interval
    at every logged step the seeds share (He et al.'s Fig. 6 with a band over seeds). None
    without curves; one seed: the line without a band (low = high = mean)."""
    runs = [[(int(p[0]), 100 * (1 - p[1])) for p in c if p[1] is not None]
            for c in curves if c]
    runs = [r for r in runs if r]
    if not runs:
        return None
    n = min(map(len, runs))
    band: dict[str, list[float]] = {"steps": [], "mean": [], "low": [], "high": []}
    for i in range(n):
        col = [r[i][1] for r in runs]
        iv = stats.mean_interval(col)
        m = statistics.fmean(col)
        band["steps"].append(runs[0][i][0])
        band["mean"].append(m)
        band["low"].append(m if iv is None else iv.low)
        band["high"].append(m if iv is None else iv.high)
    return band
