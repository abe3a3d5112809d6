"""One finetune run from the photos to results.json, and --compare's two runs on one split.

`run` settles the backbone and the strategy first (choice.py); `_run_one` then reads top to
bottom: set up (the backbone, the split, the network on its device, the one pass over the
photos), train or fit, and on rank 0 the test photos' one measurement and what the run leaves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.finetune.choice import chosen_rows, resolve_backbone, resolve_strategy
from cnnlab.tasks.finetune.config import COMPARED, SCHEMA, FinetuneConfig, bn_words, top_k_for
from cnnlab.tasks.finetune.data import Prepared, load_split, prepare_once
from cnnlab.tasks.finetune.head import fit_head, partial_head_init
from cnnlab.tasks.finetune.outputs import (
    explain_test_mistakes,
    export_model,
    predictions_csv,
    score,
    settings,
)
from cnnlab.tasks.finetune.strategies import Trainer, threads, train


def run(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
        ) -> dict[str, Any] | None:
    """Train into `run_dir` (continue its `last` checkpoint when `resume`); results on rank 0."""
    config = resolve_backbone(config, run_dir, reporter, resume)
    config = resolve_strategy(config, run_dir, reporter, resume)
    if config.compare:
        return run_compare(config, run_dir, reporter, resume)
    return _run_one(config, run_dir, reporter, resume, split_dir=run_dir)


@dataclass
class _SetUp:
    """A run ready to train: the network set to its strategy on its device, the photos checked
    (and their features or activations computed, where the strategy caches them)."""

    name: str  # the backbone's registered name
    weights_file: Path  # its ImageNet weights
    net: Any  # models.transfer.TransferModel, or models.frozen_transfer.FrozenTransfer
    preprocess: Any
    prepared: Prepared
    device: Any
    info: Any  # dist.DistInfo of this process
    reporter: Any  # quiet on the ranks other than 0
    precision: tuple[str, str]  # ("fp32" | "bf16", why): --precision resolved on the device


@dataclass
class _Trained:
    """How the network got the weights it is tested with."""

    selected: str  # "fit" (the head solved by L-BFGS), or the checkpoint loaded: best or last
    fit_result: Any = None  # engine.FitResult of a run trained for epochs
    head_fit: dict[str, Any] | None = None  # the L-BFGS fit (results.json "head_fit")
    head_init: dict[str, Any] | None = None  # partial: the fitted head it started from


def _run_one(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool,
             split_dir: RunDir) -> dict[str, Any] | None:
    """One strategy into `run_dir`; the split comes from (and is saved to) `split_dir`, which
    is --compare's parent directory for its two runs. Results on rank 0, None elsewhere."""
    start = time.perf_counter()
    setup = _set_up(config, run_dir, reporter, resume, split_dir)
    trainer = Trainer(config, setup.prepared, setup.net, setup.preprocess, setup.device,
                      setup.info)
    trained = _train_or_fit(config, setup, trainer, run_dir, resume, chosen_rows(split_dir))
    setup.net.eval()
    if not setup.info.is_main:
        return None
    results = _measure_and_write(config, setup, trainer, trained, run_dir, split_dir, start)
    run_dir.save_results(results)
    if config.report:
        from cnnlab.report.finetune import write_report

        write_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results


def _set_up(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool,
            split_dir: RunDir) -> _SetUp:
    """The checks that need no work first (backbone name, weights, split), then the pretrained
    network with a new head, set to the strategy, and the one pass over the photos. On cached
    ONNX graphs with a recorded manifest (the default's second run on) no torch is imported:
    the net is a FrozenTransfer and the photos' features numpy arrays (issue 27 item 4)."""
    from cnnlab import dist
    from cnnlab.hardware import resolve_precision
    from cnnlab.models.pretrained import fetch, pretrained_spec_of
    from cnnlab.models.registry import get_spec

    info = dist.from_env()
    spec = get_spec(config.backbone)  # a misspelt backbone first, before any work
    weights_file = fetch(pretrained_spec_of(spec), spec.name, config.weights)
    split, saved = load_split(config, split_dir, resume)
    if info.enabled and config.strategy == "gradual":
        raise CnnlabError("--strategy gradual runs in one process (it changes which weights "
                          "train between epochs, which DistributedDataParallel does not allow)")
    if not info.is_main:
        from cnnlab.progress import Reporter

        reporter = Reporter(quiet=True)
    info, device = dist.init(config.device)
    # --precision auto means what it means to `cnnlab train`: one resolver (hardware.py).
    precision, why = resolve_precision(config.precision, device)
    if info.is_main and not resume:
        run_dir.save_config(config)
        run_dir.save_environment(seed=config.seed, device=str(device), precision=precision,
                                 precision_reason=why)
    manifest = _manifest_on_graphs(config, spec.name, weights_file, device)
    if manifest is None:  # a PyTorch net is built now (the lazy one needs no seed)
        import torch

        torch.manual_seed(config.seed)
    preprocess = pretrained_spec_of(spec).preprocess
    net = _network(config, spec.name, weights_file, len(split.classes), device, manifest)
    reporter.log(
        f"finetune: {config.strategy} {spec.name} on {len(split.classes)} classes, "
        f"{len(split.train)}/{len(split.val)}/{len(split.test)} train/val/test photos "
        f"(test: {split.sources['test']}); {bn_words(config)}"
    )
    prepared = prepare_once(config, split, saved, net, preprocess, weights_file, device, info,
                            reporter)
    if info.is_main and not saved:
        split_dir.write_json("split.json", prepared.split.to_json())
    return _SetUp(spec.name, weights_file, net, preprocess, prepared, device, info, reporter,
                  (precision, why))


def _manifest_on_graphs(config: FinetuneConfig, name: str, weights_file: Path, device):
    """The backbone's recorded manifest when the run never needs its PyTorch body
    (`_on_graphs`), else None (the TransferModel is built)."""
    from cnnlab.models.features import file_digest
    from cnnlab.models.frozen_transfer import load_manifest

    if not _on_graphs(config, device):
        return None
    return load_manifest(name, file_digest(weights_file))


def _network(config: FinetuneConfig, name: str, weights_file: Path, n_classes: int, device,
             manifest=None):
    """The pretrained network with a new head, set to the strategy: a TransferModel, built
    now; or, where the run would never run its PyTorch body (the frozen body's fitted head,
    its passes on ONNX Runtime), a FrozenTransfer that builds it only if something asks
    (models/frozen_transfer.py), given the backbone's `manifest` a run has recorded."""
    from cnnlab.models.frozen_transfer import FrozenTransfer, transfer_recorded

    def build():
        import torch

        from cnnlab.models.registry import create_pretrained

        model, _, _ = create_pretrained(name, weights_file)
        net = transfer_recorded(model, name, weights_file, n_classes)
        net.set_strategy(config.strategy, config.bn)
        if config.partial:
            net.unfreeze(config.train_stages)
        return net.to(device=device, memory_format=torch.channels_last)

    if manifest is None:
        return build()
    return FrozenTransfer(name, weights_file, n_classes, manifest, build)


def _on_graphs(config: FinetuneConfig, device) -> bool:
    """Whether the run never needs its PyTorch body: the frozen body's head fitted on cached
    features, every pass on ONNX Runtime (the CPU), so the maps of its mistakes can come from
    the pretrained graph too (outputs.graph_maps)."""
    from cnnlab.models.inference import resolve_engine

    return (config.fitted and config.cached and not config.partial and device.type == "cpu"
            and resolve_engine(config.engine, device) == "onnxruntime")


def _train_or_fit(config: FinetuneConfig, setup: _SetUp, trainer: Trainer, run_dir: RunDir,
                  resume: bool, choice: list[dict[str, Any]] | None) -> _Trained:
    """The head solved by L-BFGS (freeze's default; --model auto's `choice` table may hold its
    cross-validation already), or the network trained for epochs on the engine and the kept
    checkpoint (best, else last) loaded back."""
    if config.fitted:  # solved, not trained: the refit is done before any test photo is seen
        return _Trained("fit", head_fit=fit_head(config, setup.prepared, trainer, setup.net,
                                                 setup.reporter, choice))
    from cnnlab import checkpoints
    from cnnlab.engine import BEST, LAST, load_weights

    head_init = None
    if config.partial:  # the head starts where the frozen default ends (a resume: reloaded)
        head_init = partial_head_init(config, setup.prepared, trainer, setup.net,
                                      setup.reporter)
    fit_result = train(config, trainer, run_dir, setup.reporter, resume, setup.precision[0])
    selected = BEST if checkpoints.exists(run_dir.path, BEST) else LAST
    load_weights(trainer.model, run_dir, selected)
    return _Trained(selected, fit_result=fit_result, head_init=head_init)


def _measure_and_write(config: FinetuneConfig, setup: _SetUp, trainer: Trainer,
                       trained: _Trained, run_dir: RunDir, split_dir: RunDir,
                       start: float) -> dict[str, Any]:
    """The test photos scored once; then what the run leaves: model.safetensors + model.json,
    predictions.csv, the CAMs of the mistakes, and results.json's record (returned)."""
    split = setup.prepared.split
    k = top_k_for(len(split.classes), config.top_k)
    logits, targets = trainer.logits("test"), trainer.targets["test"]
    scores = score(logits, targets, split.classes, k)
    # A fitted head used the validation photos for fitting: its validation score would be a
    # training score. Its honest estimate before the test is the cross-validated accuracy.
    val = trainer.evaluate(trainer.model) if trained.fit_result is not None else {}
    choice = chosen_rows(split_dir)
    # Counted in the first run that used it only (--compare: the freeze run).
    first = split_dir is run_dir or config.strategy == "freeze"
    choice_seconds = sum(r["seconds"] for r in choice) if choice and first else 0.0
    # One torch thread: ~300 small tensor copies, which a second thread made 0.3 CPU-s
    # instead of 0.01 on a busy 2-core machine (Lite0, issue 27).
    with threads(1):
        export_model(run_dir, setup.net, config, split.classes, setup.preprocess,
                     setup.weights_file, trained.selected)
    run_dir.write_text("predictions.csv", predictions_csv(
        split.test, split.root, targets, logits, split.classes, max(k, 1)))
    explanations = None
    features = (setup.prepared.features or {}).get("test")
    from_graph = ((setup.weights_file, features)
                  if features is not None and _on_graphs(config, setup.device) else None)
    if config.explain:
        # One thread: a few photos per pass (analysis/cams.MAP_BATCH), where a second thread
        # saves little on an idle machine and on a shared one made the maps of 10 mistakes
        # cost 3.1-3.3 CPU-s and 12.5 s instead of 0.43 CPU-s and 2.5 s (Lite0, AMX Xeon,
        # load ~6; issue 27).
        with threads(1):
            explanations = explain_test_mistakes(setup.net, config.backbone, setup.preprocess,
                                                 split, logits, targets, config.draft,
                                                 run_dir, setup.reporter, from_graph)
    training = _training_record(trained)
    # total: end to end, the backbone choice of --model auto included (it ran first).
    seconds = {"choose_backbone": round(choice_seconds, 3),
               "prepare": round(setup.prepared.seconds, 3),
               "train": round(training["seconds"], 3),
               "total": round(time.perf_counter() - start + choice_seconds, 3)}
    return _results(config, setup, trained, training, scores, val, choice, seconds,
                    explanations)


def _training_record(trained: _Trained) -> dict[str, Any]:
    """How training went, for results.json: epochs run, why it stopped, the epoch kept, the
    training accuracy (of the kept epoch) and the seconds; a fitted head has no epochs."""
    result = trained.fit_result
    if result is None:
        return {"epochs_run": 0, "stopped": "converged", "selected_epoch": None,
                "train_accuracy": trained.head_fit["train_accuracy"],
                "seconds": trained.head_fit["seconds"]}
    kept = next((r for r in result.history if r["epoch"] == result.best_epoch), result.last)
    return {"epochs_run": result.epochs_done, "stopped": result.stopped,
            "selected_epoch": (result.best_epoch if trained.selected == "best"
                               else result.epochs_done),
            "train_accuracy": (100.0 * kept["train_accuracy"]
                               if "train_accuracy" in kept else None),
            "seconds": result.train_seconds}


def _results(config: FinetuneConfig, setup: _SetUp, trained: _Trained,
             training: dict[str, Any], scores: dict[str, Any], val: dict[str, float],
             choice: list[dict[str, Any]] | None, seconds: dict[str, float],
             explanations: dict[str, Any] | None) -> dict[str, Any]:
    """results.json of one strategy's run."""
    split = setup.prepared.split
    return {
        "schema": SCHEMA,
        "data": str(split.root.resolve()),
        "layout": split.layout,
        "sources": split.sources,
        "classes": list(split.classes),
        "backbone": setup.name,
        "weights": str(setup.weights_file),
        **split.counts(),
        "n_skipped": len(split.skipped),
        "settings": settings(config, setup.net, setup.precision),
        "epochs_run": training["epochs_run"],
        "stopped": training["stopped"],
        "selected_epoch": training["selected_epoch"],
        "selected": trained.selected,
        "train_accuracy": training["train_accuracy"],
        "val_accuracy": 100.0 * val["val_accuracy"] if val else None,
        "val_loss": val.get("val_loss"),
        "head_fit": trained.head_fit,
        "head_init": trained.head_init,
        "backbone_choice": choice,
        "top1_error": scores["top1_error"],
        "top1_interval": scores["top1_interval"],
        "top_k": scores["top_k"],
        "topk_error": scores["topk_error"],
        "topk_interval": scores["topk_interval"],
        "test_accuracy": 100.0 - scores["top1_error"],
        "per_class_accuracy": scores["per_class"],
        "feature_cache": setup.prepared.feature_info,
        "seconds": seconds,
        "skipped": [{"file": s.path, "reason": s.reason} for s in split.skipped],
        "explanations": explanations,
        "device": str(setup.device),
        "world_size": setup.info.world_size,
    }


def compare_cost(config: FinetuneConfig) -> float:
    """A strategy's work in passes of the backbone over the photos: its weight in --compare's
    overall bar, so that the ETA is not that of two equal halves when freeze takes seconds and
    finetune minutes. A frozen body on cached features is one forward pass (the head's epochs
    on the vectors cost next to nothing); otherwise every epoch runs the body over the training
    photos, one forward pass when it is frozen, about three (forward + backward) when it
    trains, plus one pass to evaluate."""
    if config.cached:
        return 1.0
    per_epoch = 1.0 if config.strategy == "freeze" else 3.0
    return per_epoch * config.epochs_ + 1.0


def run_compare(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
                ) -> dict[str, Any] | None:
    """freeze and finetune on one split, each into its own sub-directory, then one table.
    The two runs are the steps of one overall bar (weighted by `compare_cost`)."""
    from cnnlab import dist

    info = dist.from_env()
    if not info.is_main:
        from cnnlab.progress import Reporter

        reporter = Reporter(quiet=True)
    if info.is_main and not resume:
        run_dir.save_config(config)
    runs = {}
    costs = [compare_cost(config.for_strategy(s)) for s in COMPARED]
    with reporter.overall("finetune", len(COMPARED), costs) as display:
        for k, strategy in enumerate(COMPARED, start=1):
            rep = display.step(k, strategy)
            sub = RunDir(run_dir.path / strategy)
            done = sub.read_json("results.json") if sub.file("results.json").is_file() else None
            if done is not None and done.get("stopped") != "time-limit":  # finished before
                runs[strategy] = {**done, "run_dir": str(sub.path)}
                rep.log(f"{strategy}: finished earlier, kept")
                continue
            again = resume and sub.file("last.json").is_file()
            if info.is_main:
                sub.path.mkdir(parents=True, exist_ok=True)
                if not again:  # a start that died before its first checkpoint: start clean
                    sub.file("metrics.jsonl").unlink(missing_ok=True)
            runs[strategy] = _run_one(config.for_strategy(strategy), sub, rep, again,
                                      split_dir=run_dir)
    if not info.is_main:
        return None
    from cnnlab.report.finetune import summary_row

    rows = [summary_row(s, r) for s, r in runs.items()]
    results = {"schema": SCHEMA + "+compare", "data": runs["freeze"]["data"],
               "backbone": runs["freeze"]["backbone"], "rows": rows,
               "backbone_choice": chosen_rows(run_dir),
               "runs": {s: r["run_dir"] for s, r in runs.items()}}
    run_dir.save_results(results)
    if config.report:
        from cnnlab.report.finetune import write_compare_report

        write_compare_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results
