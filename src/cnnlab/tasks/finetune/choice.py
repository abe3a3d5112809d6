"""The choices settled before a run trains, on the training side of the split only (train +
validation photos, never the test ones): `--strategy auto` (partial for few photos per class,
else freeze) and `--model auto` (each backbone's frozen features scored by cross-validation,
`models/backbone_choice.py`; the table is kept in CHOICE_FILE, which a resume reads back)."""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.finetune.config import AUTO, DEFAULT_BACKBONE, FinetuneConfig
from cnnlab.tasks.finetune.data import load_split

CHOICE_FILE = "backbone_choice.json"
# --strategy auto (BENCHMARKS.md, issue 17, "--strategy auto"): partial while the training
# photos (train + validation) are at most this many per class, else freeze.
AUTO_PARTIAL_MAX_PER_CLASS = 20


def auto_strategy(n_photos: int, n_classes: int) -> tuple[str, str]:
    """--strategy auto's rule on the training side of the split: (strategy, why)."""
    per_class = n_photos / max(n_classes, 1)
    if per_class <= AUTO_PARTIAL_MAX_PER_CLASS:
        return "partial", (f"{per_class:.1f} training photos per class (at most "
                           f"{AUTO_PARTIAL_MAX_PER_CLASS}): the top stage trains on cached "
                           "views")
    return "freeze", (f"{per_class:.1f} training photos per class (over "
                      f"{AUTO_PARTIAL_MAX_PER_CLASS}): the frozen body's fitted head")


def resolve_strategy(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
                     ) -> FinetuneConfig:
    """The config with a concrete strategy: --strategy auto decided by `auto_strategy` on the
    split's train + validation photos (never the test ones); config.json keeps the result."""
    from dataclasses import replace

    if config.strategy != "auto":
        return config
    split, _ = load_split(config, run_dir, resume)
    chosen, why = auto_strategy(len(split.train) + len(split.val), len(split.classes))
    reporter.log(f"--strategy auto: {chosen} ({why})")
    return replace(config, strategy=chosen)


def resolve_backbone(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
                     ) -> FinetuneConfig:
    """The config with a concrete backbone: the one asked for; DEFAULT_BACKBONE when none was
    and --weights was given or only one is here; else the best by cross-validation on the
    training photos (written to backbone_choice.json, which a resumed run reads back)."""
    from dataclasses import replace

    from cnnlab.models.backbone_choice import available_backbones

    if config.backbone not in (None, AUTO):
        return config
    if config.backbone == AUTO and config.weights is not None:
        raise CnnlabError("--weights belongs to one backbone: give --model NAME with it")
    if resume and run_dir.file(CHOICE_FILE).is_file():  # config.json has it; kept as a guard
        return replace(config, backbone=run_dir.read_json(CHOICE_FILE)["chosen"])
    candidates = available_backbones() if config.weights is None else []
    if config.backbone is None and len(candidates) <= 1:
        return replace(config, backbone=DEFAULT_BACKBONE)
    if not candidates:
        raise CnnlabError("--model auto: no backbone has ImageNet weights on this machine; "
                          "`cnnlab models --pretrained` lists where they can come from")
    chosen, rows = choose_backbone(config, candidates, run_dir, reporter)
    run_dir.write_json(CHOICE_FILE, {"chosen": chosen, "rows": rows})
    # The file that was scored is the file used (and recorded in config.json for a resume).
    weights = next((w for name, w in candidates if name == chosen), None)
    return replace(config, backbone=chosen, weights=None if weights is None else str(weights))


def choose_backbone(config: FinetuneConfig, candidates, run_dir: RunDir, reporter
                    ) -> tuple[str, list[dict[str, Any]]]:
    """Score every candidate on the training side of the split (train + val), never test."""
    from cnnlab import dist
    from cnnlab.models.backbone_choice import best_of, score_backbones

    split, _ = load_split(config, run_dir, resume=False)
    items = [it for p in ("train", "val") for it in split.part(p)]
    targets = split.targets("train") + split.targets("val")
    _, device = dist.init(config.device)
    reporter.log(f"--model auto: scoring {len(candidates)} backbones by cross-validation on "
                 f"{len(items)} train + validation photos")
    rows = score_backbones(candidates, [it.path for it in items], targets, len(split.classes),
                           reporter, seed=config.seed, device=device, workers=config.workers,
                           draft=config.draft, engine=config.engine)
    chosen = best_of(rows) or DEFAULT_BACKBONE
    for r in rows:
        r["chosen"] = r["backbone"] == chosen
    return chosen, rows



def chosen_rows(run_dir: RunDir) -> list[dict[str, Any]] | None:
    """The --model auto table this run (or --compare's parent run) scored; None without one."""
    if not run_dir.file(CHOICE_FILE).is_file():
        return None
    return run_dir.read_json(CHOICE_FILE)["rows"]
