"""Fitting a training run to the minutes it has (`cnnlab train --budget`): the pure parts.

Three decisions, each a function of measured timings only, so that the same timings give the
same plan (tested with injected timings):

- `budget_steps`: the optimiser steps that fit a share of the budget with the evaluations they
  bring (the per-epoch test pass and the final test with its test-time augmentation);
- `budget_tta`: test-time augmentation only where its extra passes cost at most a tenth of the
  share;
- `choose_shape`: which shape of the default network (fast-cifar's width, with the batch size and
  learning rate that go with it) is expected to reach the highest test accuracy in the share,
  from each shape's measured accuracy-against-epochs curve (`SHAPES`, measured on CIFAR-10 and
  recorded in BENCHMARKS.md) and its seconds per step timed on this machine. A narrow net gets
  more epochs in the same seconds and wins on short budgets; the full width wins once the narrow
  one has flattened out.

`tasks/train/` does the timing (budget_plan.py, calibration.py) and the training; nothing here
touches a model.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

from cnnlab.errors import CnnlabError, suggest

BUDGET_MARGIN = 0.9  # plan for 90% of a budget: the timing of a few steps is not exact
TTA_PASSES = {"none": 1, "flip": 2, "flip-translate": 6}  # forward passes per test image
TTA_SHARE = 0.1  # test-time augmentation may take at most this share of a budget


def budget_steps(seconds: float, step_seconds: float, batch_size: int, steps_per_epoch: int,
                 eval_images: int, eval_every: int, test_images: int, test_passes: int,
                 margin: float = BUDGET_MARGIN, forward: float | None = None) -> int:
    """The optimiser steps that fit in `seconds` with the evaluations they bring: the final
    test (`test_images` x `test_passes` forward passes) and one evaluation of `eval_images`
    every `eval_every` epochs. `forward`: seconds per image of an evaluation pass, timed; else
    a third of its share of a training step (forward, and a backward pass of about twice the
    forward's arithmetic; timed, evaluation came out ~1.2x that, so a run times it).
    Pure: the same timings give the same plan (tested)."""
    def fit(seconds_left: float) -> int:  # 1e-9: 27.0 / 0.1 is 269.99999999999997 in floats
        return max(1, math.floor(seconds_left / step_seconds + 1e-9))

    if forward is None:
        forward = step_seconds / batch_size / 3
    available = seconds * margin - test_images * test_passes * forward
    steps = fit(available)
    for _ in range(3):  # the evaluations depend on the epochs, which depend on the steps
        evals = math.ceil(steps / (steps_per_epoch * eval_every))
        steps = fit(available - evals * eval_images * forward)
    return steps


def budget_tta(tta: str, seconds: float, test_pass_seconds: float) -> str:
    """The recipe's test-time augmentation if its extra passes over the test set cost at most
    TTA_SHARE of the budget, else the strongest cheaper one that does ("flip", then "none"):
    on a short budget six passes over 10,000 test images can cost more than the training
    (measured: 20 of 27 s), and the training buys more accuracy than TTA's point or so."""
    order = [t for t in ("flip-translate", "flip", "none")
             if TTA_PASSES[t] <= TTA_PASSES[tta]]
    for t in order:
        if (TTA_PASSES[t] - 1) * test_pass_seconds <= TTA_SHARE * seconds:
            return t
    return "none"


# ---------------------------------------------------------------------------------------------
# Shapes of the default network for a budget


# The two kinds of CPU a curve can come from (hardware.resolve_precision decides a run's):
# "bf16", trained under bf16 autocast on a CPU with native bf16 (avx512_bf16 / amx_bf16), and
# "fp32", trained in fp32 (a CPU without them, or CNNLAB_PRECISION=fp32 forced on one with).
# What an epoch buys can differ between them (bf16 rounds every convolution's inputs), so a
# prediction says when it rests on the other kind's curve (`other_kind_note`).
CURVE_KINDS = ("bf16", "fp32")


@dataclass(frozen=True)
class Shape:
    """fast-cifar at one width, with the batch size and peak learning rate tuned for it, and
    its test accuracy (%) on CIFAR-10 after E epochs of the `fast` recipe (the one-cycle
    schedule fitted to E, flip + translate TTA), measured: `curve` = ((E, accuracy), ...),
    trained at `curve_precision` (CURVE_KINDS) on a `curve_cpu`.

    `sizes`: progressive resizing, ((fraction of the steps, side in pixels), ...) from the
    first fraction 0.0 on: the training images are shrunk to that side until the next
    fraction (data/progressive.py); () trains at the data's own 32 px throughout. The test is
    always at 32 px, so the last size should be 32."""

    name: str
    widths: tuple[int, int, int]
    batch_size: int
    lr: float
    curve: tuple[tuple[float, float], ...]
    curve_precision: str = "bf16"
    curve_cpu: str = ""
    sizes: tuple[tuple[float, int], ...] = ()

    def __post_init__(self) -> None:
        if self.curve_precision not in CURVE_KINDS:
            raise CnnlabError(f"shape {self.name}: curve_precision must be one of "
                              f"{', '.join(CURVE_KINDS)}")
        if self.sizes and (self.sizes[0][0] != 0.0 or any(
                b[0] <= a[0] for a, b in itertools.pairwise(self.sizes))):
            raise CnnlabError(f"shape {self.name}: sizes must start at fraction 0.0 and rise")

    def options(self) -> dict:
        return {"widths": self.widths}

    def size_shares(self) -> list[tuple[int, float]]:
        """[(side in px, share of the steps), ...]: what a step costs on average (timing) and
        the MACs of an average image (pruning)."""
        if not self.sizes:
            return [(32, 1.0)]
        ends = [f for f, _ in self.sizes[1:]] + [1.0]
        return [(px, end - f) for (f, px), end in zip(self.sizes, ends, strict=True)]

    def pixel_ratio(self) -> float:
        """An average training image's pixels over a 32 px one's (1.0 without resizing)."""
        return sum(share * side**2 for side, share in self.size_shares()) / 32**2


# Measured with `cnnlab train DATA --epochs E` on the shared JPEG copy of CIFAR-10, seed 0
# unless a mean is given (BENCHMARKS.md, "CIFAR-10 time to accuracy" and "accuracy against
# budget"): the accuracy a shape reaches depends on its epochs, not on the machine; the
# seconds an epoch costs are what the calibration times here.
QUARTER = Shape(
    name="quarter", widths=(32, 64, 128), batch_size=512, lr=0.75,
    # 1.2 epochs: 72.95% (73.27 ± 0.38% over 3 seeds with flip TTA); 1.4: 75.04; 2: 79.06;
    # 3: 82.57 (2026-11-27, AMD EPYC); 0.3: 49.78; 0.6: 61.96; 6: 85.99; 10: 87.03
    # (2026-12-02, Intel Xeon, AMX).
    curve=((0.3, 49.78), (0.6, 61.96), (1.2, 72.95), (1.4, 75.04), (2.0, 79.06), (3.0, 82.57),
           (6.0, 85.99), (10.0, 87.03)),
    # Both machines chose bf16 (`--precision auto`): a bf16 curve.
    curve_precision="bf16", curve_cpu="bf16-capable CPUs (AMD EPYC avx512_bf16; Intel Xeon AMX)",
)
FULL = Shape(
    name="full", widths=(64, 128, 256), batch_size=1024, lr=1.5,
    # 1.24 epochs: 70.78 ± 0.75% (3 seeds); 1.5: 75.66; 2: 80.44; 4.5: 86.58; 6: 88.30;
    # 10: 89.60 (the `fast` recipe's default; 2026-11-27, AMD EPYC).
    curve=((1.24, 70.78), (1.5, 75.66), (2.0, 80.44), (4.5, 86.58), (6.0, 88.30), (10.0, 89.60)),
    curve_precision="bf16", curve_cpu="a bf16-capable CPU (AMD EPYC, avx512_bf16)",
)
# Shapes for a CPU without bf16, where a step costs ~2x the bf16 one (fp32 only or forced):
# a 0.95-minute budget bought the quarter 67 steps (0.69 epochs, 64.3%) on a 2-core Xeon
# without bf16 (issue 25). Each does a step in about half the quarter's fp32 arithmetic
# (BENCHMARKS.md, "--budget on fp32": one-thread CPU time per image, same run, 16 px 0.20x,
# 24 px 0.46x, the eighth width 0.47x the quarter's), so the same seconds buy ~2x the epochs.
# Measured with `CNNLAB_PRECISION=fp32 python benchmarks/budget_shapes.py --shapes NAME
# --epochs E --seeds ...` (2026-12-07, Intel Xeon with AMX, fp32 forced): an fp32 curve.
# Beyond its last point a curve stays flat, so on longer budgets the quarter and full widths,
# measured further, win.
EIGHTH = Shape(
    name="eighth", widths=(16, 32, 64), batch_size=512, lr=0.75,
    # 1.1 epochs: 66.80% (seed 0); 1.5: 69.95 ± 0.88% (seeds 0-2: 68.99, 70.73, 70.14).
    curve=((1.1, 66.80), (1.5, 69.95)),
    curve_precision="fp32", curve_cpu="Intel Xeon with AMX, CNNLAB_PRECISION=fp32",
)
QUARTER_RESIZE = Shape(
    name="quarter-resize", widths=(32, 64, 128), batch_size=512, lr=0.75,
    # 1.0 epoch: 64.96% (seed 0); 1.5: 71.39 ± 0.13% (seeds 0-2: 71.53, 71.28, 71.36; no
    # TTA 70.03 ± 0.39%): less per epoch than the quarter at 32 px throughout (~75.7% at 1.5,
    # bf16), more per second.
    curve=((1.0, 64.96), (1.5, 71.39)),
    curve_precision="fp32", curve_cpu="Intel Xeon with AMX, CNNLAB_PRECISION=fp32",
    sizes=((0.0, 16), (0.5, 24), (0.75, 32)),
)
# Cheapest first (MACs per average training image: 6.8 M, 9.7 M, 19.9 M, 65.4 M): the
# calibration always times the first and the others only where they could win.
SHAPES = (EIGHTH, QUARTER_RESIZE, QUARTER, FULL)
CHANCE = 10.0  # % on CIFAR-10's ten balanced classes

# Points the curve loses without flip + translate TTA, from the same runs: quarter at 1.2
# epochs flip 73.27 / none 72.47; full at 10 epochs flip 89.43 / none 88.85 / both 89.58.
TTA_LOSS = {"flip-translate": 0.0, "flip": 0.3, "none": 1.0}


def expected_accuracy(shape: Shape, epochs: float, tta: str = "flip-translate") -> float:
    """Test accuracy (%) the shape is expected to reach in `epochs`: linear between measured
    points; below the first, linear down to chance at 0 epochs (pessimistic: the one-cycle
    schedule learns fast early); beyond the last, the last (no extrapolation upwards)."""
    points = shape.curve
    if epochs >= points[-1][0]:
        acc = points[-1][1]
    elif epochs <= points[0][0]:
        acc = CHANCE + (points[0][1] - CHANCE) * max(epochs, 0.0) / points[0][0]
    else:
        acc = points[-1][1]
        for (e0, a0), (e1, a1) in itertools.pairwise(points):
            if e0 <= epochs <= e1:
                acc = a0 + (a1 - a0) * (epochs - e0) / (e1 - e0)
                break
    return max(CHANCE, acc - TTA_LOSS[tta])


# A wider net does more arithmetic per image but runs its convolutions more efficiently: per
# image, full (3.3x quarter's MACs) cost 2.0x quarter's time on one AMX core (2026-12-02).
# A shape is timed only if it could win even at EFFICIENCY_BOUND x its MACs ratio per image
# (2x more efficient per MAC than the cheapest shape, a bound safely past the 1.65x measured).
EFFICIENCY_BOUND = 0.5


@dataclass(frozen=True)
class Candidate:
    """One shape's plan for a share of the budget: what it would train and reach."""

    shape: str
    # Timed here, or (timed=False) the optimistic bound that showed it could not win.
    seconds_per_step: float
    steps: int
    epochs: float
    tta: str
    expected_accuracy: float
    timed: bool = True
    curve_precision: str = "bf16"  # the kind of CPU its expected accuracy rests on

    def as_dict(self) -> dict:
        return asdict(self)


def plan_shape(shape: Shape, seconds: float, step_seconds: float, n_train: int,
               test_images: int, eval_images: int, eval_every: int, tta: str,
               test_curve: bool, timed: bool = True) -> Candidate:
    """The steps, epochs, TTA and expected accuracy of one shape in `seconds` at
    `step_seconds` per step (the plan `tasks/train/one.py` then trains)."""
    steps_per_epoch = max(1, n_train // shape.batch_size)
    # Evaluation is at 32 px; a progressive shape's step was timed at its smaller sizes: scale
    # by the pixels (measured, the small sizes cost a little less than their pixels: fp32,
    # 16 px 0.20x and 24 px 0.46x a 32 px step, BENCHMARKS.md, so this errs on the safe side).
    forward = step_seconds / shape.batch_size / 3 / shape.pixel_ratio()
    chosen_tta = budget_tta(tta, seconds, forward * test_images)
    # Without TTA the final test reuses the last evaluation's test pass (tasks/train/one.py).
    passes = 0 if chosen_tta == "none" and test_curve else TTA_PASSES[chosen_tta]
    steps = budget_steps(seconds, step_seconds, shape.batch_size, steps_per_epoch, eval_images,
                         eval_every, test_images, passes)
    epochs = steps * shape.batch_size / n_train
    return Candidate(shape.name, step_seconds, steps, round(epochs, 3),
                     chosen_tta, round(expected_accuracy(shape, epochs, chosen_tta), 2), timed,
                     shape.curve_precision)


def other_kind_note(shape: Shape, precision: str) -> str | None:
    """A sentence for the report and the summary when `shape`'s curve was measured on the other
    kind of CPU than this run's (`precision`, "bf16" or "fp32", as hardware.resolve_precision
    chose it); None when it is this kind's own curve."""
    if shape.curve_precision == precision:
        return None
    return (f"the {shape.name} shape's accuracy curve was measured in {shape.curve_precision} "
            f"(on {shape.curve_cpu or 'another CPU'}) but this run trains in {precision}: the "
            f"expected accuracy rests on the other kind of CPU's curve")


def choose_shape(seconds: float, time_step, macs: dict[str, int], n_train: int,
                 test_images: int, eval_images: int, eval_every: int, tta: str,
                 test_curve: bool, shapes: tuple[Shape, ...] = SHAPES, prune: bool = True
                 ) -> tuple[Shape, list[Candidate]]:
    """The shape expected to reach the highest test accuracy in `seconds`, and every
    candidate's plan. `time_step(shape)` returns its seconds per step on this machine (the
    caller times a few steps; a test injects numbers); `macs[name]` its multiply-accumulates
    per image. The cheapest shape is always timed; a dearer one only if even an optimistic
    bound on its step time (its MACs ratio x EFFICIENCY_BOUND) could beat the best so far, so a
    short budget does not spend its seconds timing a network it cannot use (`prune`; a CPU
    bound: on a GPU a small net leaves the device idle and a wider one may cost no more, so
    there every shape is timed). Ties go to the cheaper shape. Deterministic given the
    timings."""
    base = shapes[0]
    base_step = time_step(base)
    best = plan_shape(base, seconds, base_step, n_train, test_images, eval_images, eval_every,
                      tta, test_curve)
    candidates = [best]
    chosen = base
    per_image = base_step / base.batch_size
    for shape in shapes[1:]:
        bound = (per_image * max(1.0, macs[shape.name] / macs[base.name]) * EFFICIENCY_BOUND
                 * shape.batch_size)
        optimistic = plan_shape(shape, seconds, bound, n_train, test_images, eval_images,
                                eval_every, tta, test_curve, timed=False)
        if prune and optimistic.expected_accuracy <= best.expected_accuracy:
            candidates.append(optimistic)
            continue
        plan = plan_shape(shape, seconds, time_step(shape), n_train, test_images, eval_images,
                          eval_every, tta, test_curve)
        candidates.append(plan)
        if plan.expected_accuracy > best.expected_accuracy:
            best, chosen = plan, shape
    return chosen, candidates


def shape_named(name: str, shapes: tuple[Shape, ...] = SHAPES) -> Shape:
    """The shape called `name` (a calibration.json read on --resume names its choice)."""
    for s in shapes:
        if s.name == name:
            return s
    known = [s.name for s in shapes]
    raise CnnlabError(f"unknown budget shape {name!r}{suggest(str(name), known)} (cnnlab has "
                      f"{', '.join(known)})")


# ----------------------------------------------------------------------------------------------
# The batch size a budget's steps call for (nets the recipe was not tuned on)

# Fewer optimiser steps than this and a net the recipe was not tuned for barely starts to learn:
# the lab's ResNet-18 at batch 1024 made 17-18 steps in its 40 s and stayed at chance (9.96 ±
# 0.54%); at batch 128, 117 steps, it reached 45% (BENCHMARKS.md, "The train step at equal
# budgets", 2026-12-07, one seed). 100 steps is the smallest count measured to learn.
MIN_BUDGET_STEPS = 100
MIN_BUDGET_BATCH = 64  # below this the per-step overhead dominates the small nets' CPU time


@dataclass(frozen=True)
class EvalCost:
    """What a run's evaluations take out of its share besides its steps (`budget_steps`'
    terms), so that the batch choice counts them as the run's plan will: in the lab's train
    step the final test over 10,000 images costs ResNet-18 ~10 one-core CPU seconds (fp32),
    which the first batch rule did not count (issue 26: 9-28 steps where 132 were expected)."""

    forward: float  # seconds per image of an evaluation pass, timed (tasks/train/measure.py)
    n_train: int  # training images: an epoch's steps at each batch (the evaluations' rhythm)
    eval_images: int  # images of each evaluation during training (0: none)
    eval_every: int  # epochs between those evaluations
    test_images: int  # the final test's images
    test_passes: int  # its forward passes per image (0: the last evaluation already tested)


def steps_bought(seconds: float, batch: int, step_seconds: float,
                 evals: EvalCost | None = None) -> int:
    """The optimiser steps `seconds` buy at `step_seconds` a step of `batch` images: all of the
    planned share (BUDGET_MARGIN of it) without `evals`, else what is left once the
    evaluations are paid for (`budget_steps`, the same count the run's plan makes). Pure."""
    if evals is None:
        return math.floor(seconds * BUDGET_MARGIN / step_seconds + 1e-9)
    return budget_steps(seconds, step_seconds, batch, max(1, evals.n_train // batch),
                        evals.eval_images, evals.eval_every, evals.test_images,
                        evals.test_passes, forward=evals.forward)


def batch_for_steps(batch_size: int, lr: float, seconds: float,
                    step_seconds: dict[int, float], min_steps: int = MIN_BUDGET_STEPS,
                    floor: int = MIN_BUDGET_BATCH,
                    evals: EvalCost | None = None) -> tuple[int, float]:
    """(batch size, peak learning rate) for a budget of `seconds`: the recipe's batch while it
    buys at least `min_steps` steps, else half of it, and so on down to `floor`, the first that
    buys them (or `floor`). `step_seconds[b]`: the seconds of one step at batch b, timed on this
    machine (a batch the rule never reaches need not be timed: it asks in halving order and
    stops). `evals`: the evaluations the run will pay for out of the same seconds
    (`steps_bought`); without it every second goes to steps. The learning rate follows the
    batch by the square root of their ratio (Krizhevsky 2014's rule for SGD, the milder of the
    usual two: at 1/8 of the batch, lr / 2.8). Pure: the same timings give the same choice
    (tested)."""
    if batch_size <= 0 or seconds <= 0:
        raise CnnlabError("batch_for_steps: batch size and seconds must be positive")
    batch = batch_size
    while True:
        if (steps_bought(seconds, batch, step_seconds[batch], evals) >= min_steps
                or batch // 2 < floor):
            break
        batch //= 2
    return batch, lr * math.sqrt(batch / batch_size)
