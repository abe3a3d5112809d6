"""cnnlab's Python API: one function per command, for scripts and notebooks.

    import cnnlab
    r = cnnlab.evaluate("../shared/data/imagenet-samples", models=["efficientnet_lite0"])
    r.table             # pandas DataFrame: one row per model, top-1 / top-5 error
    r.run_dir, r.report # the run directory the command line would have written
    r                   # in Jupyter: the table and the figures

Every function takes its command's options as keyword arguments with the command line's
defaults, writes the same run directory (`out=`, default runs/<command>/<timestamp>) and returns
a `cnnlab.results.Result`. A mistake in the input raises `cnnlab.CnnlabError` with the line the
command line prints. The command line is a caller of these functions.

    params, list_models (`cnnlab models`), evaluate, finetune, predict, explain, train, sweep,
    experiment, charrnn.train / charrnn.complete / charrnn.sample, lab
"""

from cnnlab.api import charrnn
from cnnlab.api.commands import (
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

__all__ = ["charrnn", "evaluate", "experiment", "explain", "finetune", "lab", "list_models",
           "params", "predict", "sweep", "train"]
