"""cnnlab: the classic CNN and RNN course experiments, done properly.

One function per command (`cnnlab.api`), for scripts and notebooks:

    import cnnlab
    cnnlab.params("alexnet-paper").table                      # AlexNet's layers, counted
    cnnlab.evaluate("photos/", models=["efficientnet_lite0"])  # a table in Jupyter
    cnnlab.train("cifar10-jpg.zip", models=["simple-cnn", "resnet20"], epochs=1)
    cnnlab.charrnn.train(words=["hello", "green", "start"])

and `cnnlab.list_models`, `finetune`, `predict`, `explain`, `sweep`, `experiment`, `lab`. Each
returns a `Result` (numbers, a pandas table, figures, the run directory). The `cnnlab` command
line (`cnnlab.cli`) parses flags, calls these and prints. The library beneath is importable on
its own (`from cnnlab.models import create_model`). Importing cnnlab loads no torch: each
function imports what it needs when called.
"""

from cnnlab.api import (
    charrnn,
    evaluate,
    experiment,
    explain,
    finetune,
    lab,
    list_models,
    params,
    predict,
    sweep,
    train,
)
from cnnlab.errors import CnnlabError
from cnnlab.results import Result

__version__ = "0.1.0"

__all__ = ["CnnlabError", "Result", "__version__", "charrnn", "evaluate", "experiment",
           "explain", "finetune", "lab", "list_models", "params", "predict", "sweep", "train"]
