"""`cnnlab finetune`: transfer an ImageNet CNN to your own labelled photos.

    config = FinetuneConfig(data="photos/", strategy="freeze")
    results = run(config, RunDir.create("finetune"), Reporter())
    # after a crash, or to train longer (`config.from_run` reads the run's config.json):
    config = from_run(FinetuneConfig, "runs/finetune/x", "finetune", {"epochs": 40})
    results = run(config, RunDir.open("runs/finetune/x"), Reporter(), resume=True)

Steps:
1. the split (`data/splits.py`): train/val/test folders or one folder split stratified; saved
   as split.json, which a resumed run reads back instead of looking at the folder again;
2. the backbone with its ImageNet weights, then a new zero head for the classes
   (`models/transfer.py`), set to the strategy: freeze, finetune or gradual;
3. one pass over every photo before training: files that cannot be decoded are dropped there,
   once (a batch never shrinks mid-epoch), and, when the body is frozen, each photo's features
   are computed in that same pass and cached on disk (`models/features.py`), so that training
   the head costs milliseconds per epoch and a re-run costs no backbone pass at all;
4. training on the shared engine (`engine.fit`: schedule, checkpoints, resume, early stopping,
   NaN guard, DDP); the last epoch's weights are kept (`keep="best"`: the epoch with the lowest
   validation loss);
5. the test photos, held out from training and from every choice, scored once: top-1 and
   top-k error with their Wilson 95% intervals (`analysis/binomial.py`), per-class accuracy,
   predictions.csv, model.safetensors + model.json for `cnnlab predict`, curves, confusion
   matrix, the class-activation maps (Grad-CAM) of the predicted and of the true class of each
   misclassified test photo (cams/*.jpg; `explain=False` / --no-explain leaves them out) and
   the report.

Backbone: `--model auto` (the default when more than one backbone's ImageNet weights are on
this machine) scores each one's frozen features by cross-validation on the training photos and
keeps the best (`models/backbone_choice.py`); the table is in results.json and the report.

freeze (the default), `head_fit="lbfgs"` (the default with the feature cache, no augmentation
and no --epochs/--lr): the head is logistic regression on the cached features, solved to
convergence by full-batch L-BFGS, its L2 strength chosen by stratified k-fold cross-validation
on train + validation photos, then refitted on all of them (`models/head_fit.py`); validation
photos have nothing else to choose there, so they are more training data. Then the test photos
are scored once. No epochs, no checkpoints, no curves.

Defaults of the epoch-trained heads (`head_fit="epochs"`; how they were chosen: BENCHMARKS.md,
"finetune defaults"): AdamW, batch 32, label smoothing 0.1, weight decay 0.05, one warm-up
epoch then a cosine to 0, the last epoch kept. freeze: head lr 1e-3, 30 epochs, no
augmentation (cached features); finetune: head lr 1e-3 and
body lr 1e-4 (a tenth: the body is already good, and large steps wreck it -- the lab's run of
every layer at Adam's default rate ended at 16% train accuracy), 15 epochs, augmentation on,
BatchNorm frozen; gradual: as finetune, 20 epochs, the body unfrozen in up to 3 steps after the
head alone.

Where each part lives (imports point down this list, never up, none inside a function either):
  config.py      FinetuneConfig (validated in __post_init__), the defaults by strategy and
                 optimiser, top_k_for, bn_words
  data.py        the split (split.json), the one pass over the photos: unreadable files
                 dropped, features or partial's activations through the on-disk cache (Prepared)
  strategies.py  Trainer (batches, logits, validation) and `train` on the engine for every
                 strategy trained for epochs; even_batches, the optimiser, the loss
  head.py        the frozen head solved by L-BFGS with a cross-validated L2 (fit_head), and
                 partial's start from it (partial_head_init)
  outputs.py     the test photos' scores, predictions.csv, model.safetensors + model.json
                 (export_model), the CAMs of the mistakes (from the pretrained ONNX graph's
                 CAM-layer activations and the fitted head: graph_maps), results.json
                 "settings"
  choice.py      --strategy auto (auto_strategy) and --model auto (resolve/choose_backbone),
                 decided on train + validation photos only
  pipeline.py    run: one strategy end to end (set up, train or fit, measure and write), and
                 --compare's two runs on one split (run_compare, compare_cost); the default on
                 ONNX Runtime never builds the PyTorch net (models/frozen_transfer.py), and
                 on cached graphs never imports torch: numpy features, targets, head fit,
                 scores and maps, model.safetensors from the body's cached safetensors copy
"""

from cnnlab.tasks.finetune.choice import (
    AUTO_PARTIAL_MAX_PER_CLASS,
    auto_strategy,
    resolve_backbone,
)
from cnnlab.tasks.finetune.config import COMPARED, DEFAULT_BACKBONE, FinetuneConfig, top_k_for
from cnnlab.tasks.finetune.pipeline import compare_cost, run
from cnnlab.tasks.finetune.strategies import even_batches

# What callers outside the package use (the API, the lab, the tests); the rest is imported
# from the module that holds it.
__all__ = ["AUTO_PARTIAL_MAX_PER_CLASS", "COMPARED", "DEFAULT_BACKBONE", "FinetuneConfig",
           "auto_strategy", "compare_cost", "even_batches", "resolve_backbone", "run",
           "top_k_for"]
