"""`cnnlab lab`: both course labs end to end, each step a normal cnnlab run, one report.

    cnnlab lab --data-root ../shared/data --out runs/lab          # full
    cnnlab lab --quick                                             # minutes: CI runs this

A step is one of cnnlab's own commands with a config built from the lab's options; it runs
through the same `run(config, run_dir, reporter)` as on the command line, into `OUT/<step>/`.
`lab` itself only composes: it never reaches into training code, and the report reads the
steps' run artifacts (`report/lab.py`).

State lives in `OUT/lab.json`, rewritten atomically after every change:
- a step whose hash (its config, the fingerprint of its input files, cnnlab's version) matches a
  finished step is not run again — `--force STEP` runs it anyway;
- a step that was running when the lab was interrupted (Ctrl-C, kill -9, power cut) is re-run
  from scratch into a clean directory; finished steps are kept;
- a step whose data or weights are missing is `skipped` with its one-line reason, and the lab
  goes on; a step that fails is `failed` with its error, and the lab goes on too. The exit status
  tells: 0 all ran, 3 something was skipped, 1 something failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnlab import hardware
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir, to_jsonable

STATE = "lab.json"
DEFAULT_DATA_ROOT = "../shared/data"  # beside a checkout; CNNLAB_DATA overrides


def default_data_root() -> str:
    return os.environ.get("CNNLAB_DATA", DEFAULT_DATA_ROOT)


@dataclass(frozen=True)
class LabConfig:
    data_root: str = field(default_factory=default_data_root)
    quick: bool = False  # small subsets and few epochs: the whole lab in minutes (CI)
    only: tuple[str, ...] = ()  # run only these steps (the others keep their earlier results)
    skip: tuple[str, ...] = ()  # leave these steps out
    force: tuple[str, ...] = ()  # run these even when their cached result is up to date
    finetune_data: str | None = None  # transfer-learning photos (default: DATA/hymenoptera)
    report: bool = True
    # Minutes for the whole lab. The steps that train (train, experiments) share what the
    # others leave, in the default plan's proportions: more minutes buy longer training runs
    # and more seed rounds (tighter intervals), fewer shorten them; the lab stays the same
    # steps, models and claims. None: the default plan (`default_minutes()`).
    budget: float | None = None
    # "fp32": every step in fp32 (CNNLAB_PRECISION=fp32 for the steps and the processes they
    # start), so the lab can be timed as on a CPU without bf16; "auto": each step's own choice,
    # whatever the environment says; None: as the environment says.
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in (None, "auto", "fp32"):
            raise CnnlabError(f"--precision must be fp32 or auto, not {self.precision!r}")
        names = [s.name for s in STEPS]
        for flag in ("only", "skip", "force"):
            for name in getattr(self, flag):
                if name not in names:
                    from cnnlab.errors import suggest

                    raise CnnlabError(
                        f"--{flag} {name!r}: no such step{suggest(name, names)}; "
                        f"steps: {', '.join(names)}"
                    )

        if self.budget is not None:
            if self.quick:
                raise CnnlabError("give --quick or --budget, not both (--quick is a smoke run "
                                  "of fixed size)")
            need = minimum_minutes(self)
            if self.budget < need:
                raise CnnlabError(f"--budget {self.budget:g} minutes is too little for this lab: "
                                  f"it needs at least {need:.1f} (its fixed steps, and half the "
                                  "default training time)")

    def selected(self) -> list[Step]:
        return [s for s in STEPS if (not self.only or s.name in self.only)
                and s.name not in self.skip]


class Skip(Exception):
    """A step cannot run here (missing data or weights); the message says why, in one line."""


@dataclass
class Plan:
    """What one step runs: a task's `run`, its config, and the inputs its hash covers."""

    task: Callable[[Any, RunDir, Any], Any]
    config: Any
    command: str  # the cnnlab command line that runs the same thing on its own
    inputs: list[Path] = field(default_factory=list)
    # Run after the task, on its run directory (e.g. the char-RNN's completions of h g s e t);
    # its output lands in the step's own directory, so the report reads it like any artifact.
    after: Callable[[RunDir, Any], None] | None = None


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    plan: Callable[[LabConfig], Plan]
    # Seconds the step took on the 2-core Xeon (2026-12-02, BENCHMARKS.md), full and --quick,
    # with empty caches: the estimate printed before the lab starts and the overall bar's ETA.
    seconds: float = 1.0
    quick_seconds: float = 1.0

    # On a machine with one CPU, where a step that runs two processes on two gets none of
    # that (the experiments step): its seconds there.
    one_cpu_seconds: float | None = None

    def estimate(self, config: LabConfig) -> float:
        if config.quick:
            return self.quick_seconds
        share = budget_shares(config).get(self.name)
        if share is not None:  # a training step under the lab's budget
            return 60 * share + (30 if self.name == "train" else 0)
        if self.one_cpu_seconds is not None:
            from cnnlab.tasks.experiment import available_cores

            if available_cores() < 2:
                return self.one_cpu_seconds
        return self.seconds


# ----------------------------------------------------------------------------- the steps


def _params_plan(command: str, inputs: list[Path] | None = None, **kw) -> Plan:
    from cnnlab.tasks import params

    return Plan(params.run, params.ParamsConfig(**kw), command, inputs=list(inputs or []))


DEMO_PHOTO = ("imagenet-samples", "n01440764_tench.JPEG")  # under the data root
# Whose filters and feature maps the concepts step draws: the first with ImageNet weights here
# (offline: EfficientNet-Lite0, whose weights ship as a pip package). AlexNet first: its 64
# 11x11 filters are the classic picture; Lite0's 32 are 3x3.
FEATURE_MODELS = ("alexnet", "resnet18", "efficientnet_lite0")
FEATURES_FILE = "features.json"  # the concepts step's filters/maps record (report/lab.py)


def _pretrained_here(names: tuple[str, ...]) -> list[str]:
    from cnnlab.models.pretrained import locate, pretrained_spec_of
    from cnnlab.models.registry import get_spec

    return [m for m in names if locate(pretrained_spec_of(get_spec(m))).path is not None]


def _draw_features(model: str | None, photo: Path | None):
    """The concepts step's pictures of what a CNN computes: `model`'s first-layer filters and,
    with a photo, a few channels after each stage (`cnnlab explain --filters --maps`), into the
    step's directory; features.json records them (or why there are none)."""

    def after(run_dir: RunDir, results: Any) -> None:
        from cnnlab.tasks import explain

        record: dict[str, Any] = {"model": model, "filters": None, "maps": None}
        if model is None:
            record["reason"] = ("no ImageNet weights of " + ", ".join(FEATURE_MODELS)
                                + " here")
        else:
            try:
                record["filters"] = explain.draw_filters(model, None, run_dir)
                if photo is not None:
                    record["maps"] = explain.draw_maps(
                        explain.ExplainConfig(model=model, maps=str(photo)), run_dir)
            except CnnlabError as exc:  # the numbers stand without the pictures
                record["reason"] = str(exc)
        run_dir.write_json(FEATURES_FILE, record)

    return after


def plan_concepts(cfg: LabConfig) -> Plan:
    # Lab A (1): what local connectivity and weight sharing buy, for every conv layer of the
    # paper's AlexNet; the building blocks' shares of parameters and MACs (from the layers);
    # and, where the sample photos are, the same shown on a photo: shift it, and the conv
    # layer's maps shift with it while a locally-connected and a dense layer's do not. Lab B
    # (1) "convolution extracts features, pooling shrinks them", as pictures: a pretrained
    # net's first-layer filters and its feature maps after each stage of the same photo.
    photo = Path(cfg.data_root).joinpath(*DEMO_PHOTO)
    demo = photo if photo.is_file() else None
    model = next(iter(_pretrained_here(FEATURE_MODELS)), None)
    explain_cmd = (f"; cnnlab explain --filters {model} -m {model}"
                   + (f" --maps {photo}" if demo else "")) if model else ""
    plan = _params_plan("cnnlab params alexnet-paper --groups 2 --sharing"
                        + (f" --demo {photo}" if demo else "") + explain_cmd,
                        inputs=[demo] if demo else [],
                        models=("alexnet-paper",), sharing=True, options={"groups": 2},
                        demo=str(demo) if demo else None)
    plan.after = _draw_features(model, demo)
    return plan


def plan_alexnet(cfg: LabConfig) -> Plan:
    # Lab A (2) and Lab B (2): AlexNet counted layer by layer (the lab's hand count is
    # 62,378,344), torchvision's single-GPU variant beside it, and the ResNet family.
    models = ("alexnet-paper", "alexnet", "resnet18", "resnet34", "resnet50", "resnet101",
              "resnet152")
    return _params_plan("cnnlab params " + " ".join(models), models=models)


def plan_alexnet_groups(cfg: LabConfig) -> Plan:
    return _params_plan("cnnlab params alexnet-paper --groups 2", models=("alexnet-paper",),
                        options={"groups": 2})


EXTRA_EVAL_MODELS = ("alexnet", "googlenet", "resnet18")  # the lab's trio, when weights exist
# Class-activation maps of each model's first N mistakes: the report shows a handful, and the
# step stays fast (about 0.3 s per map pair for Lite0 on one core; BENCHMARKS.md, "CAMs").
EVAL_CAMS = 2


def plan_evaluate(cfg: LabConfig) -> Plan:
    from cnnlab.models.pretrained import locate, pretrained_spec_of
    from cnnlab.models.registry import get_spec
    from cnnlab.tasks import evaluate

    photos = Path(cfg.data_root) / "imagenet-samples"
    if not photos.is_dir():
        raise Skip(f"no ImageNet sample photos at {photos} (set --data-root)")
    models = list(evaluate.DEFAULT_MODELS)
    models += [m for m in EXTRA_EVAL_MODELS
               if locate(pretrained_spec_of(get_spec(m))).path is not None]
    config = evaluate.EvaluateConfig(path=str(photos), models=tuple(models),
                                     limit=50 if cfg.quick else None, explain_limit=EVAL_CAMS)
    command = f"cnnlab evaluate {photos} " + " ".join(f"-m {m}" for m in models) + (
        " --limit 50" if cfg.quick else "") + f" --explain-limit {EVAL_CAMS}"
    return Plan(evaluate.run, config, command, inputs=[photos])


LAB_BACKBONE = "efficientnet_lite0"  # the finetune step's body (its weights ship with cnnlab)
LAB_FINETUNE_EPOCHS = 8


def plan_finetune(cfg: LabConfig) -> Plan:
    # Lab A (4): the lab's two experiments — every layer trained vs the body frozen — on one
    # split of the user's photos (default: hymenoptera). --quick: 2 epochs each.
    from cnnlab.tasks import finetune

    data = Path(cfg.finetune_data) if cfg.finetune_data else Path(cfg.data_root) / "hymenoptera"
    if not data.is_dir():
        raise Skip(f"no transfer-learning photos at {data} (set --data-root or --finetune-data)")
    # Fine-tuning for 8 epochs instead of the strategy's 15: on hymenoptera both end at 6.5%
    # top-1 test error (10 of 153 photos), 8 in 188 s against 327 s (2026-12-02, BENCHMARKS.md).
    quick = {"epochs": 2} if cfg.quick else {"epochs": LAB_FINETUNE_EPOCHS}
    # One backbone for both, the lab's way (it used AlexNet for both): Lite0. `--model auto`
    # would score Lite0/1/2 and pick Lite2 on hymenoptera, and fine-tuning Lite2 for 15 epochs
    # takes ~39 s an epoch on 2 cores (measured in a fresh `make lab`, 2026-12-02): ~10
    # minutes, half the lab's 20. The question is freeze against fine-tune, not which body.
    config = finetune.FinetuneConfig(data=str(data), compare=True, backbone=LAB_BACKBONE,
                                     **quick)
    command = f"cnnlab finetune {data} --compare -m {LAB_BACKBONE} --epochs {quick['epochs']}"
    return Plan(finetune.run, config, command, inputs=[data])


TRAIN_MODELS = ("simple-cnn", "resnet18", "fast-cifar")  # the lab's two, and cnnlab's CPU net
CIFAR_ZIP = ("cifar10", "cifar10-jpg.zip")


TRAIN_SEEDS = 3
# The train step's share of the lab: 9 runs of 40 s each. On a quiet 2-core fp32 CPU, estimated
# from one-core CPU timings, enough for ResNet-18 to make 100-170 steps at the batch the budget
# chooses once its final test over 10,000 images (~10 one-core CPU seconds) is paid; at 117
# steps (batch 128) it reached 45.4 +- 1.7% over 3 seeds against the plain CNN's 51.3 +- 1.1%
# at 120 (batch 512): "did not hold" (BENCHMARKS.md, "The evaluations paid first"). Under load
# the same minutes buy far fewer steps, and the report then says "too short to decide"
# (report/lab.py: `too_short`).
TRAIN_MINUTES = 6.0
# The experiments step without a budget (3 seed rounds) on the 2-core Xeon (BENCHMARKS.md):
# 557 s in one process; with two processes (--workers 2, a group of studies each) the longest
# group, depth + filters + pooling, takes ~305 s (experiment.ROUND_SECONDS). The base of its
# share when the lab has a budget.
EXPERIMENT_MINUTES = 9.3
EXPERIMENT_MINUTES_2_WORKERS = 5.3


def experiment_minutes() -> float:
    from cnnlab.tasks.experiment import available_cores

    return EXPERIMENT_MINUTES_2_WORKERS if available_cores() >= 2 else EXPERIMENT_MINUTES
TRAINING_STEPS = ("train", "experiments")  # the steps a lab budget scales


def budget_shares(cfg: LabConfig) -> dict[str, float]:
    """{step: minutes} for the training steps under the lab's budget ({} without one): the
    budget less the other selected steps' estimates, split in the default plan's proportions
    (train 6 : experiments 5.3 with two CPUs, 9.3 with one)."""
    if cfg.budget is None or cfg.quick:
        return {}
    base = {"train": TRAIN_MINUTES, "experiments": experiment_minutes()}
    chosen = [s.name for s in cfg.selected() if s.name in TRAINING_STEPS]
    if not chosen:
        return {}
    fixed = sum(s.seconds for s in cfg.selected() if s.name not in TRAINING_STEPS) / 60
    # the train step's estimate also holds 30 s of decoding and final tests (see STEPS)
    left = max(0.0, cfg.budget - fixed - (0.5 if "train" in chosen else 0.0))
    total = sum(base[n] for n in chosen)
    return {n: left * base[n] / total for n in chosen}


def minimum_minutes(cfg: LabConfig) -> float:
    """The smallest --budget the lab accepts: its other steps, and at least half the default
    minutes for each training step (less leaves ResNet-18 and the deeper nets of the
    experiments a few dozen steps: nothing to report)."""
    steps = [s for s in STEPS if (not cfg.only or s.name in cfg.only)
             and s.name not in cfg.skip]
    fixed = sum(s.seconds for s in steps if s.name not in TRAINING_STEPS) / 60
    half = {"train": TRAIN_MINUTES / 2 + 0.5, "experiments": experiment_minutes() / 2}
    return fixed + sum(half[s.name] for s in steps if s.name in TRAINING_STEPS)


def plan_train(cfg: LabConfig) -> Plan:
    # Lab B (3), on equal terms: the lab's plain CNN, the lab's ResNet-18 and the fast net, each
    # with the same (fast) recipe and the same time per seed (not the same epochs: the question
    # is which is better for the minutes a student has), 3 seeds; the batch and lr of the nets
    # the recipe was not tuned on follow the steps their minutes buy once their evaluations are
    # paid (tasks/train/batch_choice.py). --quick: 20 images per class, 1 epoch, batches of
    # 100, one seed.
    from cnnlab.tasks import train

    data = Path(cfg.data_root).joinpath(*CIFAR_ZIP)
    if not data.is_file():
        raise Skip(f"no CIFAR-10 at {data} (set --data-root)")
    models = " ".join(f"-m {m}" for m in TRAIN_MODELS)
    if cfg.quick:
        config = train.TrainConfig(data=str(data), models=TRAIN_MODELS, recipe="fast",
                                   limit_per_class=20, epochs=1, batch_size=100)
        flags = "--limit-per-class 20 --epochs 1 --batch-size 100"
    else:
        minutes = round(budget_shares(cfg).get("train", TRAIN_MINUTES), 2)
        config = train.TrainConfig(data=str(data), models=TRAIN_MODELS, recipe="fast",
                                   seeds=TRAIN_SEEDS, budget=minutes)
        flags = f"--seeds {TRAIN_SEEDS} --budget {minutes:g}"
    return Plan(train.run, config, f"cnnlab train {data} {models} {flags}", inputs=[data])


LAB_WORDS = ("hello", "green", "start")
LAB_PREFIXES = ("h", "g", "s", "e", "t")


def plan_charrnn(cfg: LabConfig) -> Plan:
    from cnnlab.tasks import charrnn

    def complete_prefixes(run_dir: RunDir, results: Any) -> None:
        from cnnlab.models.char_rnn import Sampling, complete

        model, vocab, _ = charrnn.load_checkpoint(run_dir.path)
        comps = complete(model, vocab, list(LAB_PREFIXES), Sampling())
        run_dir.write_json("completions.json", [
            {"prefix": c.prefix, "completion": c.completion, "probability": c.probability}
            for c in comps
        ])

    return Plan(charrnn.run, charrnn.TrainConfig(words=LAB_WORDS, seed=0),
                "cnnlab charrnn train --words hello green start; "
                "cnnlab charrnn complete RUN h g s e t", after=complete_prefixes)


def plan_experiments(cfg: LabConfig) -> Plan:
    # Lab B (1) and (2): depth, filter size, pooling, and "ResNet counters the derivative going
    # to zero", checked with data and 95% intervals over seeds (cnnlab experiment). The full
    # lab: 3 seeds of every net, no time budget, so that every machine trains the same trials
    # and reports the same numbers (9.3 minutes on the 2-core Xeon, BENCHMARKS.md); a budget
    # would buy more seeds on a fast machine and cut trials on a slow one. --quick: seconds per
    # trial, one seed, no verdicts.
    from cnnlab.tasks import experiment

    data = Path(cfg.data_root) / experiment.DEFAULT_DATA
    if not data.is_file():
        raise Skip(f"no CIFAR-10 at {data} (set --data-root)")
    names = experiment.EXPERIMENTS
    if cfg.quick:
        config = experiment.ExperimentConfig(experiments=names, data=str(data), quick=True,
                                             seeds=1, limit_per_class=10)
        flags = "--quick --seeds 1 --limit-per-class 10"
    else:
        minutes = budget_shares(cfg).get("experiments")
        minutes = None if minutes is None else round(minutes, 2)
        config = experiment.ExperimentConfig(experiments=names, data=str(data), seeds=3,
                                             budget=minutes)
        flags = "--seeds 3" + (f" --budget {minutes:g}" if minutes else "")
    # The four studies are independent and these small nets train about as fast on one thread
    # as on two: with 2+ CPUs, two processes (a group of studies each) use the second core.
    if experiment.available_cores() >= 2:
        config = replace(config, workers=2)
        flags += " --workers 2"
    return Plan(experiment.run, config,
                f"cnnlab experiment {' '.join(names)} --data {data} {flags}", inputs=[data])


STEPS: tuple[Step, ...] = (
    Step("concepts", "Concepts in numbers: local connectivity and weight sharing", plan_concepts,
         3, 3),
    Step("alexnet", "AlexNet's parameters, and the ResNet family", plan_alexnet, 2, 2),
    Step("alexnet-groups", "AlexNet as published, on two GPUs (groups=2)", plan_alexnet_groups,
         1, 1),
    Step("evaluate", "Pretrained CNNs on ImageNet photos", plan_evaluate, 30, 15),
    Step("finetune", "Transfer learning: freeze the body or fine-tune it all", plan_finetune,
         220, 40),
    # 20 s to decode CIFAR-10 into the cache the first time, the budget, the nine final tests.
    Step("train", "Plain CNN against ResNet on CIFAR-10", plan_train, 60 * TRAIN_MINUTES + 30,
         25),
    Step("charrnn", "A character RNN learns hello, green, start", plan_charrnn, 1, 1),
    Step("experiments", "Lab B's claims checked: depth, filters, pooling, residual connections",
         plan_experiments, 390, 40, one_cpu_seconds=560),
)


# ------------------------------------------------------------------------------ machinery


def fingerprint(paths: list[Path]) -> str:
    """Changes when any input file is added, removed, resized or touched (name, size, mtime):
    cheap enough to run on every lab start, unlike hashing gigabytes of photos."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(root) if p != root else p.name}\0{st.st_size}\0"
                     f"{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def step_hash(plan: Plan) -> str:
    import importlib.metadata

    # The installed version, not the package face's: a task never imports the face (DESIGN.md).
    try:
        version = importlib.metadata.version("cnnlab")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    content = {"config": to_jsonable(plan.config), "task": plan.task.__module__,
               "inputs": fingerprint(plan.inputs), "cnnlab": version}
    forced = hardware.forced_precision()
    if forced is not None:  # a step run in forced fp32 is not the same result as its own choice
        content["precision"] = forced
    payload = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def load_state(run_dir: RunDir) -> dict[str, Any]:
    if run_dir.file(STATE).is_file():
        return run_dir.read_json(STATE)
    return {"format": "cnnlab-lab/1", "steps": {}}


def open_lab_dir(out: str | Path) -> RunDir:
    """The lab's directory: new, or an earlier lab's (to continue it); anything else is refused."""
    path = Path(out)
    if path.exists() and any(path.iterdir()) and not (path / STATE).is_file():
        raise CnnlabError(f"{path} holds files but is not a cnnlab lab directory (no {STATE}); "
                          "choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def _run_step(step: Step, config: LabConfig, run_dir: RunDir, state: dict[str, Any],
              reporter) -> None:
    """Runs one step into run_dir/<step> (or keeps it when up to date); records it in state.
    `reporter` prefixes its lines with the step (see Reporter.overall)."""
    record = state["steps"].get(step.name, {})
    try:
        plan = step.plan(config)
    except Skip as exc:
        state["steps"][step.name] = {"status": "skipped", "reason": str(exc),
                                     "title": step.title}
        run_dir.write_json(STATE, state)
        reporter.log(f"skipped — {exc}")
        return
    digest = step_hash(plan)
    step_dir = run_dir.path / step.name
    if (record.get("status") == "done" and record.get("hash") == digest
            and step.name not in config.force and step_dir.is_dir()):
        reporter.log(f"up to date (ran {record.get('finished', '?')}), not re-run")
        return
    if step_dir.exists():  # an interrupted or outdated run of this step: start it clean
        shutil.rmtree(step_dir)
    state["steps"][step.name] = {"status": "running", "hash": digest, "title": step.title,
                                 "run_dir": step.name, "command": plan.command}
    run_dir.write_json(STATE, state)
    reporter.log(step.title)
    start = time.monotonic()
    sub = RunDir.create(step.name, out=step_dir)
    try:
        results = plan.task(plan.config, sub, reporter)
        if plan.after is not None:
            plan.after(sub, results)
    except (CnnlabError, Skip) as exc:
        status = "skipped" if isinstance(exc, Skip) else "failed"
        state["steps"][step.name].update(status=status, reason=str(exc))
        reporter.log(f"{status} — {exc}")
    except Exception as exc:  # a bug in one step must not cost the others their results
        state["steps"][step.name].update(
            status="failed", reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8))
        reporter.log(f"failed — {type(exc).__name__}: {exc}")
    else:
        state["steps"][step.name].update(
            status="done", seconds=round(time.monotonic() - start, 1),
            finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        reporter.log(f"done in {time.monotonic() - start:.0f} s")
    run_dir.write_json(STATE, state)


def run(config: LabConfig, run_dir: RunDir, reporter) -> dict[str, Any]:
    """Run the selected steps in order into `run_dir`; returns lab.json's contents."""
    with _precision_env(config.precision):
        return _run_steps(config, run_dir, reporter)


@contextlib.contextmanager
def _precision_env(precision: str | None) -> Iterator[None]:
    """CNNLAB_PRECISION=`precision` while the steps run (in this process, and inherited by the
    worker processes they start); the environment as it was afterwards."""
    if precision is None:
        yield
        return
    before = os.environ.get(hardware.PRECISION_ENV)
    os.environ[hardware.PRECISION_ENV] = precision
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(hardware.PRECISION_ENV, None)
        else:
            os.environ[hardware.PRECISION_ENV] = before


def _run_steps(config: LabConfig, run_dir: RunDir, reporter) -> dict[str, Any]:
    state = load_state(run_dir)
    run_dir.save_config(config)
    run_dir.save_environment(**{hardware.PRECISION_ENV: os.environ.get(hardware.PRECISION_ENV)})
    steps = config.selected()
    estimates = [s.estimate(config) for s in steps]
    reporter.log("estimated time (measured on a 2-core Xeon; a slower CPU takes longer): "
                 + ", ".join(f"{s.name} {_duration(e)}" for s, e in zip(steps, estimates,
                                                                       strict=True))
                 + f"; {_duration(sum(estimates))} in all")
    with reporter.overall("lab", len(steps), estimates) as display:
        for k, step in enumerate(steps, start=1):
            _run_step(step, config, run_dir, state, display.step(k, step.name))
    if config.report:
        from cnnlab.report.lab import write_report

        write_report(run_dir.path)
    return state


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def exit_status(state: dict[str, Any], config: LabConfig) -> int:
    """0 when every selected step ran, 3 when one was skipped, 1 when one failed."""
    statuses = [state["steps"].get(s.name, {}).get("status") for s in config.selected()]
    if "failed" in statuses:
        return 1
    return 3 if "skipped" in statuses else 0


def step_rows(state: dict[str, Any], config: LabConfig) -> list[dict[str, Any]]:
    """One row per selected step (status, seconds, the reason of a skip or failure): what
    `cnnlab lab` prints at the end and the API's table."""
    rows = []
    for step in config.selected():
        rec = state["steps"].get(step.name, {})
        rows.append({"step": step.name, "status": rec.get("status"),
                     "seconds": rec.get("seconds"), "note": rec.get("reason", "")})
    return rows
