"""One function per `cnnlab` command (charrnn's three: api/charrnn.py).

Each takes the command's options as keyword arguments with the command line's defaults (None:
the task's own default, as the flag not given), writes the same run directory (`out=`, default
runs/<command>/<timestamp>) and returns a `Result`. The command line parses its flags, calls
these, and prints the result: the two cannot drift (tests/test_api.py walks both).

Nothing heavy is imported at module level: `import cnnlab` stays fast and torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab.api._support import Resumable, given, names, reporter, result, resumed
from cnnlab.errors import CnnlabError

# What may change when a run is resumed (cli/resume.py reads these too).
TRAIN_RESUME = Resumable(allowed=("time_limit", "threads"))
EXPERIMENT_RESUME = Resumable(allowed=("seeds", "budget", "max_seeds", "threads", "workers",
                                       "report"),
                              per_invocation=("budget",))
SWEEP_RESUME = Resumable(allowed=("trials", "budget", "workers"))
FINETUNE_RESUME = Resumable(allowed=("epochs", "time_limit"), per_invocation=("time_limit",))


# ------------------------------------------------------------------------------- architecture

def params(models: Sequence[str] | str | None = None, *, input: str | None = None,
           depth: int | None = None, summary: bool = False, sharing: bool = False,
           layer: str | None = None, demo: str | None = None, groups: int | None = None,
           out: str | Path | None = None, quiet: bool = False):
    """Per-layer parameters, MACs and output shapes of registered models (`cnnlab params`).

    models: registry names ("alexnet-paper", "resnet18", "timm/convnext_tiny").
    input: input shape "CxHxW" (default: the model's own). depth: group layers N module levels
    deep. summary: one row per model. sharing: conv vs locally-connected vs dense for every conv
    layer. layer: one conv layer to compare, e.g. "conv 3x224x224 -> 96 k11 s4 p2". demo: a
    photo shifted by a few pixels, to see whose maps shift with it (shift_demo.png).
    groups: alexnet-paper's 1 (all-to-all) or 2 (the paper's two GPUs).

    Returns a Result: `.table` the layers of one model (or one row per model with summary= or
    several models); `.models[i]["total_params"]`, `["macs"]` and the rest of results.json.

        >>> cnnlab.params("alexnet-paper", groups=2).models[0]["total_params"]
        60965224
    """
    from cnnlab.dist import open_run
    from cnnlab.report.params import table_rows
    from cnnlab.tasks import params as task
    from cnnlab.tasks import run_task

    config = task.ParamsConfig(models=names(models) or (), input=input, depth=depth,
                               summary=summary, sharing=sharing, layer=layer,
                               options={} if groups is None else {"groups": groups}, demo=demo)
    run_dir = open_run("params", out)
    results = run_task(task.run, config, run_dir, reporter(quiet))
    return result("params", results, table_rows(results, summary), run_dir.path,
                  title="parameters: " + ", ".join(config.models))


def list_models(source: str | None = None, pretrained: bool = False):
    """Every registered model (`cnnlab models`): its source (cnnlab, torchvision, timm), its
    parameter count and where its pretrained ImageNet weights are on this machine.

    source: only "cnnlab", "torchvision" or "timm". pretrained: only models whose weights are
    here (what `finetune`, `predict` and `evaluate` can use offline).
    (Named list_models, not models: `cnnlab.models` is the model package.)

    Returns a Result (no run directory): `.table` one row per model (name, source, params,
    weights), `.models` the same rows as dicts.
    """
    from cnnlab.models import list_models as registered
    from cnnlab.models.pretrained import availability
    from cnnlab.models.registry import count_parameters_of

    if source not in (None, "cnnlab", "torchvision", "timm"):
        raise CnnlabError(f"source must be cnnlab, torchvision or timm, not {source!r}")
    rows = []
    for spec in registered(source):
        where = availability(spec.pretrained)
        if pretrained and where in ("-", "none", "download only"):
            continue
        rows.append({"name": spec.name, "source": spec.source,
                     "params": spec.published_params or count_parameters_of(spec),
                     "weights": where})
    return result("models", {"models": rows}, rows, title="registered models")


# ------------------------------------------------------------------ pretrained ImageNet models

def _weights(values: Mapping[str, str] | Sequence[str] | str | None,
             models: Sequence[str] | None) -> dict[str, str] | None:
    """{model: file} from a mapping, or from "MODEL=FILE" strings (a bare FILE when there is
    exactly one model), as `--weights` is given on the command line."""
    if not values:
        return None
    if isinstance(values, Mapping):
        return dict(values)
    out: dict[str, str] = {}
    for value in [values] if isinstance(values, str) else values:
        name, sep, file = value.partition("=")
        if not sep:
            if not models or len(models) != 1:
                raise CnnlabError(
                    f"--weights {value}: say which model it is for (--weights MODEL=FILE) "
                    "when there is not exactly one -m"
                )
            name, file = models[0], value
        out[name] = file
    return out


def evaluate(path: str | Path, models: Sequence[str] | str | None = None, *,
             weights: Mapping[str, str] | Sequence[str] | None = None,
             top_k: int | None = None, batch_size: int | None = None,
             workers: int | None = None, labels: str | None = None, csv: str | None = None,
             match: str | None = None, skip_unknown: bool | None = None,
             limit: int | None = None, draft: bool | None = None,
             channels_last: bool | None = None, report: bool | None = None,
             device: str | None = None, explain: bool | None = None,
             explain_limit: int | None = None, engine: str | None = None,
             config: str | Path | None = None, out: str | Path | None = None,
             quiet: bool = False):
    """Pretrained ImageNet CNNs on a folder of labelled photos, side by side (`cnnlab
    evaluate`): each model's top-1 and top-5 error and every photo's top-k predictions.

    path: the photos (labels from sub-folders, labels.csv or the file names; labels=).
    models: model names (default: efficientnet_lite0/1/2, whose weights ship as packages).
    weights: {model: weights file}, or ["model=FILE", ...] as on the command line.
    top_k (5), batch_size (16), workers (2), match ("synonym" or the lab's "prefix"),
    skip_unknown (False), limit (all images), report (True), device ("auto"), explain (Grad-CAM
    maps of the mistakes, True), explain_limit (all), engine ("auto": ONNX Runtime on the CPU,
    else PyTorch; "torch", "onnxruntime"); None takes these defaults, or config= (a YAML file
    of settings).

    Returns a Result: `.table` one row per model (top1_error, top5_error in percent),
    `.models`, `.report` (report.html with every mistake).

        >>> r = cnnlab.evaluate("../shared/data/imagenet-samples", models=["efficientnet_lite0"])
        >>> r.table[["model", "top1_error", "top5_error"]]
    """
    from cnnlab.config import resolve
    from cnnlab.dist import open_run
    from cnnlab.report.evaluate import summary_rows
    from cnnlab.tasks import evaluate as task
    from cnnlab.tasks import run_task

    models = names(models)
    values = {"path": None if path is None else str(path), "models": models,
              "weights": _weights(weights, models), "top_k": top_k, "batch_size": batch_size,
              "workers": workers, "labels": labels, "csv": csv, "match": match,
              "skip_unknown": skip_unknown, "limit": limit, "draft": draft,
              "channels_last": channels_last, "report": report, "device": device,
              "explain": explain, "explain_limit": explain_limit, "engine": engine}
    cfg = resolve(task.EvaluateConfig, values, config)
    run_dir = open_run("evaluate", out, device=cfg.device)
    results = run_task(task.run, cfg, run_dir, reporter(quiet))
    if results is None:  # a torchrun rank other than 0
        return None
    rows = summary_rows(results)
    return result("evaluate", results, rows, run_dir.path,
                  title=f"{len(rows)} pretrained model(s) on {Path(str(path)).name}")


def finetune(data: str | Path | None = None, *, backbone: str | None = None,
             weights: str | None = None, strategy: str | None = None,
             train_stages: int | None = None, views: int | None = None,
             head_fit: str | None = None, compare: bool | None = None, epochs: int | None = None,
             batch_size: int | None = None, optimizer: str | None = None,
             lr: float | None = None, body_lr_ratio: float | None = None,
             weight_decay: float | None = None, momentum: float | None = None,
             warmup_epochs: float | None = None, label_smoothing: float | None = None,
             augment: bool | None = None, keep: str | None = None,
             early_stopping: int | None = None, bn: str | None = None,
             split: Sequence[float] | None = None, val_fraction: float | None = None,
             seed: int | None = None, cache: bool | None = None, top_k: int | None = None,
             workers: int | None = None, draft: bool | None = None,
             precision: str | None = None, time_limit: float | None = None,
             device: str | None = None, report: bool | None = None,
             explain: bool | None = None, engine: str | None = None,
             config: str | Path | None = None,
             out: str | Path | None = None, quiet: bool = False,
             resume: str | Path | None = None):
    """Transfer a pretrained ImageNet CNN to your own labelled photos (`cnnlab finetune`).

    data: DATA/train|val|test/<class>/* or DATA/<class>/* (split by split=(train, val, test)).
    backbone: a pretrained model, or "auto" (chosen by cross-validation). strategy: "freeze"
    (default; the head solved by L-BFGS, head_fit="lbfgs"), "finetune", "gradual", "partial"
    (the top train_stages stages on cached activations of views per photo) or "auto"; compare=True
    runs freeze and finetune side by side. The other settings are `cnnlab finetune --help`'s;
    None takes the default, or config= (YAML). resume=RUN continues a run (only epochs= and
    time_limit= may be given with it).

    Returns a Result: `.table` one row per strategy (top1_error with its Wilson interval),
    `.report`, and results.json's numbers as attributes.
    """
    from cnnlab.config import resolve
    from cnnlab.dist import open_run
    from cnnlab.report.finetune import summary_rows
    from cnnlab.tasks import finetune as task
    from cnnlab.tasks import run_task

    settings = dict(locals())
    rep = reporter(quiet)
    if resume:
        cfg = resumed(task.FinetuneConfig, "finetune", resume, given(finetune, settings),
                      FINETUNE_RESUME)
        run_dir = open_run("finetune", None, resume=resume, device=cfg.device)
        results = task.run(cfg, run_dir, rep, resume=True)
    else:
        if data is None:
            raise CnnlabError("give the DATA folder (or --resume RUN_DIR)")
        keys = ("backbone", "weights", "strategy", "head_fit", "compare", "epochs", "batch_size",
                "optimizer", "lr", "body_lr_ratio", "weight_decay", "momentum", "warmup_epochs",
                "label_smoothing", "augment", "keep", "early_stopping", "bn", "split",
                "val_fraction", "seed", "cache", "top_k", "workers", "draft", "precision",
                "time_limit", "device", "report", "explain", "train_stages", "views", "engine")
        values = {k: settings[k] for k in keys}
        values.update(data=str(data), split=None if split is None else tuple(split))
        cfg = resolve(task.FinetuneConfig, values, config)
        run_dir = open_run("finetune", out, device=cfg.device)
        results = run_task(task.run, cfg, run_dir, rep)
    if results is None:
        return None
    return result("finetune", results, summary_rows(results), run_dir.path,
                  title=f"transfer learning: {results.get('backbone', '')}")


def predict(model: str, inputs: Sequence[str | Path] | str | Path, *, top_k: int | None = None,
            weights: str | None = None, batch_size: int = 16, workers: int = 2,
            device: str = "auto", explain: bool = False, engine: str = "auto",
            out: str | Path | None = None, quiet: bool = False,
            on_record: Callable[[dict[str, Any]], Any] | None = None):
    """Top-k classes of photos (`cnnlab predict`) from a finetune run directory or a pretrained
    ImageNet model name.

    inputs: photos and/or folders (walked, sorted). top_k: classes per photo (the run's k; 5 for
    ImageNet models). explain=True also draws each photo's top-class Grad-CAM map into a run
    directory (out=, default runs/predict/<timestamp>) with a report. on_record: called with
    each photo's record as soon as its batch is classified, before the call returns (the
    command line prints them as they come). engine: the forward pass's, "auto" (ONNX Runtime on
    the CPU, else PyTorch), "torch" or "onnxruntime"; the maps stay in PyTorch.

    Returns a Result: `.records` (one dict per photo: file, top [{class, probability, index}]
    and with explain=True cam, the map's file; or error), `.table` one row per photo (its top
    class and probability). A CnnlabError when no photo could be classified.
    """
    from cnnlab.tasks.predict import PredictConfig, predict_explained, summary_row
    from cnnlab.tasks.predict import predict as run_predict

    if isinstance(inputs, str | Path):
        inputs = [inputs]
    config = PredictConfig(model=str(model), inputs=tuple(str(i) for i in inputs), top_k=top_k,
                           weights=weights, batch_size=batch_size, workers=workers,
                           device=device, explain=explain, engine=engine)
    if out is not None and not explain:
        raise CnnlabError("--out is where --explain puts its maps; give --explain with it")
    rep = reporter(quiet)
    run_dir = None
    if explain:
        from cnnlab.dist import open_run

        run_dir = open_run("predict", out)
    records: list[dict[str, Any]] = []
    try:
        for record in (predict_explained(config, rep, run_dir) if run_dir is not None
                       else run_predict(config, rep)):
            if run_dir is not None and record.get("cam"):  # a new dict: the task reads its own
                record = {**record, "cam": str(run_dir.file(record["cam"]))}
            records.append(record)
            if on_record is not None:
                on_record(record)
        n_bad = sum("error" in r for r in records)
        rep.log(f"predict: {len(records) - n_bad} photo(s) classified, {n_bad} skipped")
        if n_bad == len(records):
            raise CnnlabError(f"no photo could be classified ({n_bad} skipped)")
    except BaseException:
        if run_dir is not None:
            run_dir.remove_if_empty()  # a refused run leaves no directory
        raise
    return result("predict", {"records": records}, [summary_row(r) for r in records],
                  None if run_dir is None else run_dir.path, title=f"predictions of {model}")


def explain(inputs: Sequence[str | Path] | str | Path | None = None, *,
            model: str = "efficientnet_lite0", method: str = "gradcam", top_k: int = 3,
            layer: str | None = None, weights: str | None = None, filters: str | None = None,
            maps: str | None = None, limit: int | None = None, device: str = "auto",
            report: bool = True, out: str | Path | None = None, quiet: bool = False):
    """Class-activation maps of photos, first-layer filters, feature maps (`cnnlab explain`).

    inputs: photos and/or folders; model: a pretrained model or a finetune run; method:
    "gradcam", "gradcam++", "scorecam" or "eigencam"; top_k classes explained per photo.
    filters=MODEL draws its first convolution's filters; maps=PHOTO draws model's feature maps
    after each stage.

    Returns a Result: `.table` one row per photo and class (class, probability, the map's
    file), `.figures` (filters.png, maps.png where drawn), `.report`.
    """
    from cnnlab.dist import open_run
    from cnnlab.report.explain import summary_rows
    from cnnlab.tasks import run_task
    from cnnlab.tasks.explain import ExplainConfig
    from cnnlab.tasks.explain import run as task

    if isinstance(inputs, str | Path):
        inputs = [inputs]
    config = ExplainConfig(inputs=tuple(str(i) for i in inputs or ()), model=model,
                           method=method, top_k=top_k, layer=layer, weights=weights,
                           filters=filters, maps=maps, limit=limit, device=device, report=report)
    run_dir = open_run("explain", out)
    results = run_task(task, config, run_dir, reporter(quiet))
    return result("explain", results, summary_rows(results), run_dir.path,
                  title=f"{results.get('method_name', method)} maps of {model}")


# ------------------------------------------------------------------------------------ training

def train(data: str | Path | None = None, *, models: Sequence[str] | str | None = None,
          recipe: str | None = None, epochs: float | None = None, batch_size: int | None = None,
          lr: float | None = None, seeds: int | None = None, seed: int | None = None,
          precision: str | None = None, limit_per_class: int | None = None,
          val_fraction: float | None = None, time_limit: float | None = None,
          budget: float | None = None, calibrate: bool | None = None,
          eval_every: int | None = None, threads: int | None = None, device: str | None = None,
          deterministic: bool | None = None, report: bool | None = None,
          config: str | Path | None = None, out: str | Path | None = None,
          quiet: bool = False, resume: str | Path | None = None):
    """Train image classifiers from scratch and compare them (`cnnlab train`).

    data: a CIFAR-style zip or folder (train/<class>/*, test/<class>/*).
    models: "simple-cnn", "resnet18", "resnet18-cifar", "resnet20".."resnet56",
    "plain20".."plain56", "fast-cifar" (default). recipe: "fast" (default) or "lab" (the
    course's). epochs, batch_size, lr override the recipe; seeds per model (1); limit_per_class
    for quick runs; budget: minutes for the whole run; None takes the default, or config= (a
    YAML file). resume=RUN continues an interrupted run (only time_limit= and threads= may be
    given with it).

    Returns a Result: `.table` one row per model (test_accuracy_mean ± test_accuracy_ci95, the
    95% interval's half-width, over seeds, params, MACs, seconds), `.runs` per (model, seed),
    `.figures` (curves), `.report`.

        >>> cnnlab.train(CIFAR, models=["simple-cnn", "resnet20"], epochs=1, limit_per_class=50)
    """
    from cnnlab.config import resolve
    from cnnlab.dist import open_run
    from cnnlab.report.train import summary_rows
    from cnnlab.tasks import run_task
    from cnnlab.tasks import train as task

    settings = dict(locals())
    rep = reporter(quiet)
    if resume:
        cfg = resumed(task.TrainConfig, "train", resume, given(train, settings), TRAIN_RESUME)
        run_dir = open_run("train", None, resume=resume)
        results = task.run(cfg, run_dir, rep, resume=True)
    else:
        if not data:
            raise CnnlabError("give DATA (a CIFAR-style zip or folder), or --resume RUN")
        keys = ("recipe", "epochs", "batch_size", "lr", "seeds", "seed", "precision",
                "limit_per_class", "val_fraction", "time_limit", "budget", "calibrate",
                "eval_every", "threads", "device", "deterministic", "report")
        values = {k: settings[k] for k in keys}
        values.update(data=str(data), models=names(models))
        cfg = resolve(task.TrainConfig, values, config)
        run_dir = open_run("train", out, device=cfg.device)
        results = run_task(task.run, cfg, run_dir, rep)
    if results is None:  # a torchrun rank other than 0
        return None
    return result("train", results, summary_rows(results), run_dir.path,
                  title="trained from scratch: " + ", ".join(r["model"] for r in results["models"]))


def sweep(config: str | Path | None = None, *, trials: int | None = None,
          budget: float | None = None, workers: int | None = None, storage: str | None = None,
          study: str | None = None, pruner: str | None = None, seed: int | None = None,
          final: bool | None = None, report: bool | None = None,
          out: str | Path | None = None, quiet: bool = False,
          resume: str | Path | None = None):
    """Hyper-parameter search with Optuna over `cnnlab train` runs (`cnnlab sweep`).

    config: the search as YAML (data, space, fixed train settings; `cnnlab sweep --help`).
    trials (20), budget (minutes), workers (processes here, 1), storage (an Optuna RDB URL),
    pruner ("median", "hyperband", "none"), final (re-train the best settings and test once,
    True). resume=RUN continues a sweep (trials=, budget=, workers= may be given with it).

    Returns a Result: `.table` one row per trial (its settings, val_accuracy), `.final` (the
    re-trained best: test_accuracy), `.figures` (history, importances, parallel plots).
    """
    from cnnlab.report.sweep import trial_rows
    from cnnlab.runs import RunDir
    from cnnlab.tasks import run_task
    from cnnlab.tasks import sweep as task

    settings = dict(locals())
    rep = reporter(quiet)
    if resume:
        cfg = resumed(task.SweepConfig, "sweep", resume, given(sweep, settings), SWEEP_RESUME)
        results = task.run(cfg, RunDir.open(resume), rep, resume=True, quiet_workers=quiet)
    else:
        if not config:
            raise CnnlabError("give CONFIG.yaml (data, space, train settings), or --resume RUN")
        keys = ("trials", "budget", "workers", "storage", "study", "pruner", "seed", "final",
                "report")
        cfg = task.load_sweep_yaml(config, {k: settings[k] for k in keys})
        run_dir = RunDir.create("sweep", out)
        results = run_task(lambda c, r, p: task.run(c, r, p, quiet_workers=quiet), cfg, run_dir,
                           rep)
    return result("sweep", results, trial_rows(results), results["run_dir"],
                  title=f"sweep: {len(results['trials'])} trial(s)")


def experiment(experiments: Sequence[str] | str = (), *, data: str | Path | None = None,
               data_root: str | Path | None = None, seeds: int | None = None,
               budget: float | None = None, max_seeds: int | None = None,
               limit_per_class: int | None = None, epochs: float | None = None,
               full: bool | None = None, quick: bool | None = None, threads: int | None = None,
               workers: int | None = None, storage: str | None = None,
               study: str | None = None, together: bool | None = None,
               report: bool | None = None, out: str | Path | None = None, quiet: bool = False,
               resume: str | Path | None = None):
    """Lab B's claims on depth, filters, pooling and ResNet, with data (`cnnlab experiment`).

    experiments: "depth", "filters", "pooling", "residual" (one or more). data: a CIFAR-style zip
    (default: data_root/cifar10/cifar10-jpg.zip). seeds per setting (3); budget: minutes, more
    seed rounds while they fit; quick=True: seconds, no verdicts. workers=N: the experiments in
    N processes (groups of about equal time), the same trials as one. storage="postgresql://..."
    and study=NAME: the same call on several machines shares the trials (studies NAME-<name>);
    each returns the whole study once no trial is left. together=False: every net trained
    alone (default: the residual study's seeds of one net as one batched model). resume=RUN
    continues a run (seeds=, budget=, max_seeds=, threads=, workers=, report= may be given with it).

    Returns a Result: `.table` every setting of every experiment (test_mean with its 95%
    interval test_ci, in percent), `.experiments[name]["verdict"]`, `.figures`, `.report`.
    """
    from cnnlab.config import from_mapping
    from cnnlab.report.experiment import summary_rows
    from cnnlab.runs import RunDir
    from cnnlab.tasks import experiment as task
    from cnnlab.tasks import run_task

    settings = dict(locals())
    rep = reporter(quiet)
    if resume:
        cfg = resumed(task.ExperimentConfig, "experiment", resume,
                      given(experiment, settings), EXPERIMENT_RESUME)
        results = task.run(cfg, RunDir.open(resume), rep, resume=True)
    else:
        if not experiments:
            raise CnnlabError(f"name an experiment: {', '.join(task.EXPERIMENTS)}")
        keys = ("data", "data_root", "budget", "seeds", "max_seeds", "limit_per_class",
                "epochs", "full", "quick", "threads", "workers", "storage", "study", "together",
                "report")
        values = {k: settings[k] for k in keys if settings[k] is not None}
        for k in ("data", "data_root"):
            if k in values:
                values[k] = str(values[k])
        values["experiments"] = names(experiments)
        cfg = from_mapping(task.ExperimentConfig, values)
        run_dir = RunDir.create("experiment", out)
        results = run_task(task.run, cfg, run_dir, rep)
    return result("experiment", results, summary_rows(results), results["run_dir"],
                  title="experiments: " + ", ".join(results["experiments"]),
                  figures=("*.png", "*/*.png"))


# ----------------------------------------------------------------------------------------- lab

def lab(*, data_root: str | Path | None = None, out: str | Path = "runs/lab",
        quick: bool = False, only: Sequence[str] = (), skip: Sequence[str] = (),
        force: Sequence[str] = (), finetune_data: str | Path | None = None,
        budget: float | None = None, precision: str | None = None, report: bool = True,
        quiet: bool = False):
    """Both course labs end to end into one directory and one report (`cnnlab lab`).

    data_root: the folder with imagenet-samples/, hymenoptera/, cifar10/ (default:
    $CNNLAB_DATA or ../shared/data). quick=True: small subsets, minutes. only / skip / force:
    step names (concepts, alexnet, alexnet-groups, evaluate, finetune, train, charrnn,
    experiments). Re-running into the same out= continues: up-to-date steps are kept.
    precision="fp32": every step in fp32 (CNNLAB_PRECISION=fp32 for the steps), "auto": each
    step's own choice; None: as the environment's CNNLAB_PRECISION says.

    Returns a Result: `.table` one row per step (status, seconds, note), `.exit_status` (0 all
    ran, 3 a step was skipped, 1 a step failed: the command line's exit status), `.report`.
    """
    from cnnlab.tasks import lab as task

    values: dict[str, Any] = {"quick": quick, "only": names(only), "skip": names(skip),
                              "force": names(force),
                              "finetune_data": None if finetune_data is None
                              else str(finetune_data), "report": report, "budget": budget,
                              "precision": precision}
    if data_root:
        values["data_root"] = str(data_root)
    config = task.LabConfig(**values)
    run_dir = task.open_lab_dir(out)
    state = task.run(config, run_dir, reporter(quiet))
    results = {**state, "exit_status": task.exit_status(state, config)}
    return result("lab", results, task.step_rows(state, config), run_dir.path,
                  title="cnnlab lab", figures=())
