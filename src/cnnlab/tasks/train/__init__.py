"""`cnnlab train`: image classifiers from scratch (CIFAR-10 and alike), one model after another,
one comparison table at the end.

    config = TrainConfig(data="cifar10-jpg.zip", models=("simple-cnn", "resnet18"), recipe="lab")
    results = run(config, RunDir.create("train"), Reporter())

For every (model, seed) the task builds the model and the recipe's optimiser, schedule,
augmentation and weight averaging (`recipes.py`), and hands the loop to the shared engine
(`engine.fit`: checkpoints, exact resume, NaN guard, DDP). Each lands in its own sub-directory
`<model>-seed<k>/` (metrics.jsonl, checkpoints, results.json); the run's results.json holds
every pair and the mean ± std per model, and `report/train.py` draws the curves and renders the
report from those files.

Data lives in memory as uint8 tensors (`data/cifar.py`, decoded once and cached on disk) and is
batched and augmented as whole tensors (`data/tensor_batches.py`): no DataLoader, no per-image
Python. Under torchrun each rank trains on its share of every epoch (batch_size / world_size
images per step), rank 0 writes; the metrics are all-reduced by the engine.

Accuracy is measured on the test set once per (model, seed), after training, with the recipe's
test-time augmentation; per-epoch test accuracy (without TTA) is logged for the curves and never
used to choose anything. The weights tested are the last epoch's or, with `--val-fraction` (a
validation split carved from train), the `best` checkpoint: the epoch of the highest validation
accuracy, so that validation picks the weights and the test set only measures them
(results.json: tested_epoch, tested_checkpoint). With `test=False` (the trials of `cnnlab
sweep`) the test set is never looked at: results hold validation accuracy only.

`model_options` pass builder options to every model (`plain-cnn`'s depth, width, kernel, ...);
`recipe_overrides` replace any field of the recipe (momentum, weight_decay, label_smoothing,
schedule, augment, lookahead, ...; nested ones as mappings), so that a sweep or an experiment can
set every training choice without a recipe of its own in `recipes.py`.

Where each part lives (each module imports only those above it in this list, lazily or not):
  config.py       TrainConfig (validated in __post_init__), OVERRIDABLE, DEFAULT_MODEL
  recipe.py       the recipe a model trains with (recipe_for, with_model, apply_overrides,
                  apply_shape) and its precision with the reason (precision_for)
  data.py         load_data (subset, image size, validation split), norm
  measure.py      accuracy in batches of EVAL_BATCH; forward_seconds (the cost of that pass)
  build.py        build: one run's model, batches and loss; seconds_per_step; macs_of
  saved.py        what --resume reads back and checks: budget.json, calibration.json,
                  a finished pair's results.json
  budget_plan.py  --budget for one (model, seed): budget_share, plan_steps (budget.json)
  calibration.py  --budget's choice of the default network's shape (calibration.json)
  batch_choice.py --budget's batch size and learning rate for a net the recipe was not tuned
                  on: the batch its steps call for (batches.json)
  one.py          train_one: one (model, seed) on the engine, then its test; tested_checkpoint
  summary.py      summarise: per model, mean ± std over the seeds
  task.py         run: every (model, seed), results.json and the report

This package's face (below) is what callers outside it use (the API, sweep, experiment, the
lab, the tests); the rest is imported from the module that holds it.
"""

from cnnlab.tasks.train.budget_plan import budget_share
from cnnlab.tasks.train.config import DEFAULT_MODEL, OVERRIDABLE, RECIPE_CHOICES, TrainConfig
from cnnlab.tasks.train.data import load_data
from cnnlab.tasks.train.measure import EVAL_BATCH, accuracy
from cnnlab.tasks.train.one import train_one
from cnnlab.tasks.train.recipe import has_normalization, precision_for, recipe_for, with_model
from cnnlab.tasks.train.summary import summarise
from cnnlab.tasks.train.task import run

__all__ = ["DEFAULT_MODEL", "EVAL_BATCH", "OVERRIDABLE", "RECIPE_CHOICES", "TrainConfig",
           "accuracy", "budget_share", "has_normalization", "load_data", "precision_for",
           "recipe_for", "run", "summarise", "train_one", "with_model"]
