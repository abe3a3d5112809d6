"""How each study's trials are trained: the two recipes written out in full, the widths, and
one `Design` per study (image size, training images, epochs, recipe, and the sentence on what
was scaled down and why, which the report prints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The plain-cnn studies' recipe, written out in full so that tuning the `fast` recipe elsewhere
# does not move these results: SGD with Nesterov momentum, a linear warm-up over the first 20%
# of the steps from 0.1 x lr, then linearly to 0 (a one-cycle schedule that suits short runs),
# mild augmentation (2-pixel reflect-padded translations, random flips), no averaging, no TTA.
PLAIN_RECIPE = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
    "bias_lr_scale": 1.0, "label_smoothing": 0.0,
    "schedule": {"kind": "linear", "warmup": 0.2, "start": 0.1, "end": 0.0},
    "augment": {"crop_pad": 2, "pad_mode": "reflect", "flip": "random"},
    "normalization": "dataset", "lookahead": None, "tta": "none", "precision": "auto",
    "batch_size": 128, "whiten_images": 0, "whiten_bias_epochs": 0.0,
}
# He et al. 2016, section 4.2: SGD, momentum 0.9, weight decay 1e-4, zero-padded translations
# + flips (their 4 pixels on 32x32 are 1 on 8x8). Their rate is 0.1 at batch 128; here 0.01 at
# batch 32 (0.04 at their batch by the linear scaling rule): measured on the 8x8 2-class design
# below (BENCHMARKS.md "The residual question decided in the lab's minutes"), at 0.02 plain-56's
# training error jumped between 28% and chance (50%) from one epoch to the next in one seed of
# three, at 0.05 (8x8, 10 classes) it never left chance; at 0.01 every seed left chance by
# step 400 and stayed at 29-32%. Batch 32 rather than 64: these nets are bound by per-layer
# overhead (a 56-layer step costs ~20 ms on one thread whatever the batch), so the smaller
# batch buys more steps per CPU second, and steps are what a deep plain net needs. Their rate is
# constant until the first decay at 32k iterations, and their Fig. 6 compares the nets along
# that constant stretch; here likewise, after a linear warm-up over the first 20% of the steps
# from 0.1x (He et al. warm up their 110-layer net for the same reason). A constant rate after
# the warm-up is what lets the doubling test (learning.doubling_test) read a plateau inside one
# run: the training error at S and at 2S steps, at the same rate; and it is what makes a
# training error only fall further while a net is still learning, which claims._valid_parts
# rests on. (Until issue 26 the rate fell linearly to 0, which lowers every net's error at the
# end whether or not it had plateaued.)
RESIDUAL_RECIPE = {
    "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
    "bias_lr_scale": 1.0, "label_smoothing": 0.0,
    "schedule": {"kind": "linear", "warmup": 0.2, "start": 0.1, "end": 1.0},
    "augment": {"crop_pad": 1, "pad_mode": "zeros", "flip": "random"},
    "normalization": "dataset", "lookahead": None, "tta": "none", "precision": "auto",
    "batch_size": 32, "whiten_images": 0, "whiten_bias_epochs": 0.0,
}
DEPTH_WIDTH = 16  # plain-cnn width for the depth study (16 .. 128 channels at depth 8)
GRID_WIDTH = 16  # the 3x3 reference width of the filters and pooling studies
RESIDUAL_WIDTH = 8  # He et al.'s 16-32-64 filters halved: 8-16-32
GRAD_BATCH = 128  # images in the fixed batch of the gradient norms
TRAIN_EVAL = 1000  # training images (100 per class) whose accuracy is the "training error"
CLASSES = 10  # CIFAR-10: chance is 1 / CLASSES


@dataclass(frozen=True)
class Design:
    """How every trial of one experiment is trained (the same for every setting and seed)."""

    image_size: int  # pixels; CIFAR's own 32, or 16 (area-averaged) where resolution is not
    # the question
    train_per_class: int  # training images per class (a fixed random sample); test: all 10,000
    epochs: float
    recipe: dict[str, Any]
    curve_every: int = 10_000  # epochs between curve points (test and training error)
    classes: int = CLASSES  # the first N of CIFAR-10's classes, in train and test
    scaled: str = ""  # what was scaled down, and why: printed by the report


DESIGNS = {
    "depth": Design(16, 500, 10, PLAIN_RECIPE, scaled=(
        "images shrunk to 16x16 and 500 training images per class (5,000), 10 epochs (390 "
        "steps): eight depths x 3 seeds reach the end of their schedule in about 2.5 minutes "
        "on 2 cores. The question is how accuracy changes with depth, not CIFAR-10's record")),
    "filters": Design(32, 500, 5, PLAIN_RECIPE, scaled=(
        "32x32 images (a kernel's size only means something against the image's), 500 "
        "training images per class, 5 epochs (195 steps), width 16 instead of 32")),
    "pooling": Design(32, 500, 5, PLAIN_RECIPE, scaled=(
        "32x32 images (the claim is about the input's size), 500 training images per class, "
        "5 epochs (195 steps), width 16 instead of 32")),
    "residual": Design(8, 500, 32, RESIDUAL_RECIPE, curve_every=1, classes=2, scaled=(
        "CIFAR-10's first 2 classes (airplane, automobile), 500 training images of each "
        "(1,000: the whole training set is the training-error sample), shrunk to 8x8, 32 "
        "epochs at batch 32 (992 steps) at a constant rate after a 20% warm-up, and 8-16-32 "
        "filters instead of 16-32-64: He et al.'s 64,000 steps would take a day here, and at "
        "10 classes no design affordable in the lab's minutes let plain-56 leave chance "
        "(BENCHMARKS.md). It still tests their claim, because degradation is about "
        "optimisation: the training error of a deeper plain net on the images it is fitting, "
        "higher than a shallower one's although the deeper net could copy the shallower one "
        "(extra layers as identities), and lowered by shortcuts at the same depth; fitting "
        "1,000 images of 2 classes is that optimisation problem, and it is what is measured "
        "(the training error on exactly those images, without augmentation), not accuracy on "
        "CIFAR-10. Each decision stands only where the nets it rests on had plateaued by the "
        "doubling test (the training error at the last step against at half the steps, over "
        "the seeds; a net still learning can only end lower)")),
}
# --quick (CI, the lab's --quick): seconds per trial, for the tables and the plumbing only.
QUICK = Design(16, 10, 1, {**PLAIN_RECIPE, "batch_size": 20}, curve_every=1,
               scaled="--quick: 10 images per class, 1 epoch: too short to decide anything")
