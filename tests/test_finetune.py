"""`cnnlab finetune` and `cnnlab predict` end to end; the few-shot defaults (Wilson
intervals, the L-BFGS head with its cross-validated L2, `--model auto`).

A tiny real backbone keeps these fast: timm's `test_efficientnet` (356 k parameters, BatchNorm,
160-pixel input) with a seeded random "ImageNet" weights file, on generated photos of three
colours. The hymenoptera test uses EfficientNet-Lite0 and its real weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnlab.analysis.binomial import error_interval, wilson
from cnnlab.errors import CnnlabError
from cnnlab.models import head_fit
from cnnlab.progress import Reporter
from cnnlab.runs import RunDir
from cnnlab.tasks import finetune
from cnnlab.tasks.finetune import FinetuneConfig, even_batches, pipeline

BACKBONE = "timm/test_efficientnet"
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 180, 30)}


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return path


def make_photos(root: Path, counts=(("train", 6), ("val", 2), ("test", 2)),
                classes=tuple(COLOURS)) -> Path:
    rng = np.random.default_rng(0)
    for part, n in counts:
        for c in classes:
            rgb = COLOURS.get(c, (120, 120, 120))
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 40, (40, 48, 3)), 0, 255)
                p = root / part / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(p)
    return root


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_photos(tmp_path / "data")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def train(data: Path, out: Path, weights: Path, **kw) -> dict:
    settings = {"backbone": BACKBONE, "weights": str(weights), "workers": 0, "epochs": 3,
                "batch_size": 8, "report": False, **kw}
    config = FinetuneConfig(data=str(data), **settings)
    return finetune.run(config, RunDir.create("finetune", out), Reporter(quiet=True))


def epochs_of(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in recs]


# ------------------------------------------------------------------------------ freeze paths


def test_cached_and_uncached_freeze_train_the_same_head(photos, tmp_path, weights):
    cached = train(photos, tmp_path / "a", weights, strategy="freeze", seed=3)
    direct = train(photos, tmp_path / "b", weights, strategy="freeze", seed=3, cache=False)
    assert cached["feature_cache"]["used"] and not direct["feature_cache"]["used"]
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert not torch.equal(wa["head.weight"], torch.zeros_like(wa["head.weight"]))
    # Features computed in one pass vs by the body on every batch: equal up to float rounding.
    assert torch.allclose(wa["head.weight"], wb["head.weight"], atol=1e-5)
    assert torch.allclose(wa["head.bias"], wb["head.bias"], atol=1e-6)
    for key in wa:  # and the body is the pretrained one, untouched, in both
        if key.startswith("body."):
            assert torch.equal(wa[key], wb[key]), key
    assert cached["top1_error"] == direct["top1_error"]
    train(photos, tmp_path / "c", weights, strategy="freeze", seed=4)
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not torch.allclose(wa["head.weight"], wc["head.weight"], atol=1e-5)  # seed matters


def test_warm_cache_rerun_runs_no_backbone_pass(photos, tmp_path, weights):
    first = train(photos, tmp_path / "a", weights)
    second = train(photos, tmp_path / "b", weights)
    assert first["feature_cache"]["computed"] == 30
    assert second["feature_cache"]["computed"] == 0
    assert second["feature_cache"]["from_cache"] == 30
    assert second["top1_error"] == first["top1_error"]


def test_outputs_of_a_run(photos, tmp_path, weights):
    r = train(photos, tmp_path / "run", weights, report=True)
    run = tmp_path / "run"
    for name in ("config.json", "environment.json", "split.json", "metrics.jsonl",
                 "results.json", "predictions.csv", "model.safetensors", "model.json",
                 "curves.png", "confusion.png", "report.md", "report.html", "last.json"):
        assert (run / name).is_file(), name
    assert (r["n_train"], r["n_val"], r["n_test"]) == (18, 6, 6)
    assert r["top_k"] == 3 and r["topk_error"] is None  # top-3 of 3 classes says nothing
    assert [c["class"] for c in r["per_class_accuracy"]] == ["blue", "green", "red"]
    assert sum(c["correct"] for c in r["per_class_accuracy"]) == round(
        6 * (100 - r["top1_error"]) / 100)
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 6 * 3
    epochs = [e for e in epochs_of(run) if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all("val_loss" in e and "train_accuracy" in e for e in epochs)
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html  # self-contained
    assert r["selected"] == "last" and r["selected_epoch"] == 3 and not (run / "best.json").exists()


def test_keep_best_keeps_the_epoch_with_the_lowest_validation_loss(photos, tmp_path, weights):
    r = train(photos, tmp_path / "run", weights, epochs=4, keep="best", lr=0.05)
    epochs = [e for e in epochs_of(tmp_path / "run") if e["kind"] == "epoch"]
    best = min(epochs, key=lambda e: e["val_loss"])
    assert r["selected"] == "best" and r["selected_epoch"] == best["epoch"]
    assert r["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)  # its weights, re-scored


def test_report_escapes_class_and_file_names(tmp_path, weights):
    evil = "<b>red|x*"
    data = make_photos(tmp_path / "data", classes=(evil, "blue"))
    (data / "test" / evil / "0.png").rename(data / "test" / evil / "<img src=x>.png")
    train(data, tmp_path / "run", weights, report=True, epochs=1)
    html = (tmp_path / "run" / "report.html").read_text()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "<b>red" not in html and "&lt;b&gt;red|x*" in html
    assert "<img src=x>" not in html
    assert r"&lt;b&gt;red\|x\*" in md and "<b>red" not in md


def test_top_k_is_three_up_to_ten_classes_and_five_above():
    assert finetune.top_k_for(2, None) == 3 and finetune.top_k_for(10, None) == 3
    assert finetune.top_k_for(11, None) == 5 and finetune.top_k_for(11, 2) == 2


def test_topk_error_with_more_classes_than_k(tmp_path, weights):
    names = ["red", "blue", "green", "grey"]
    data = make_photos(tmp_path / "data", classes=tuple(names))
    r = train(data, tmp_path / "run", weights, top_k=2)
    assert r["top_k"] == 2 and r["topk_error"] is not None
    # Recomputed from the saved per-photo rankings (predictions.csv: the top 2 classes of
    # each test photo): top-1 misses the first, top-2 misses both.
    ranked: dict[str, list[tuple[str, str]]] = {}
    for row in csv.DictReader((tmp_path / "run" / "predictions.csv").open()):
        ranked.setdefault(row["file"], []).append((row["true_class"], row["class"]))
    assert len(ranked) == 8 and all(len(v) == 2 for v in ranked.values())
    top1 = sum(v[0][1] != v[0][0] for v in ranked.values()) / 8
    top2 = sum(all(c != t for t, c in v) for v in ranked.values()) / 8
    assert r["top1_error"] == pytest.approx(100 * top1)
    assert r["topk_error"] == pytest.approx(100 * top2)
    assert top2 < top1  # here the two differ, so neither can stand in for the other


def test_undecodable_photos_are_dropped_once_before_training(photos, tmp_path, weights):
    (photos / "train" / "red" / "broken.png").write_bytes(b"\x89PNG truncated")
    (photos / "test" / "blue" / "empty.jpg").write_bytes(b"")
    (photos / "train" / "notes.txt").write_text("not a photo")
    for strategy in ("freeze", "finetune"):
        r = train(photos, tmp_path / strategy, weights, strategy=strategy, epochs=1)
        assert (r["n_train"], r["n_test"]) == (18, 6)  # the bad ones are not counted
        reasons = {s["file"]: s["reason"] for s in r["skipped"]}
        assert "train/red/broken.png" in reasons and "test/blue/empty.jpg" in reasons
        assert "empty file" in reasons["test/blue/empty.jpg"]
        split = json.loads((tmp_path / strategy / "split.json").read_text())
        assert "train/red/broken.png" not in [f for f, _ in split["train"]]


def test_dropping_unreadable_photos_can_leave_a_class_too_small(tmp_path, weights):
    data = make_photos(tmp_path / "data", counts=(("train", 2), ("test", 1)))
    (data / "train" / "red" / "0.png").write_bytes(b"garbage")
    with pytest.raises(CnnlabError, match=r"after dropping unreadable files.*'red' \(1\)"):
        train(data, tmp_path / "run", weights, val_fraction=0)


def test_even_batches_never_leave_a_batch_of_one():
    for n in range(2, 80):
        sizes = [len(b) for b in even_batches(torch.arange(n), 8)]
        assert sum(sizes) == n and min(sizes) >= 2 and max(sizes) <= 8
        assert max(sizes) - min(sizes) <= 1
    assert [len(b) for b in even_batches(torch.arange(196), 32)] == [28] * 7


# ---------------------------------------------------------------- finetune, gradual, compare


def test_finetune_and_gradual_train_the_body(photos, tmp_path, weights):
    pre = torch.load(weights, weights_only=True)
    for strategy in ("finetune", "gradual"):
        r = train(photos, tmp_path / strategy, weights, strategy=strategy, epochs=4,
                  early_stopping=0)
        w = load_file(str(tmp_path / strategy / "model.safetensors"))
        changed = [k for k in pre if k.endswith("weight") and "classifier" not in k
                   and not torch.equal(pre[k], w[f"body.{k}"])]
        assert changed, strategy
        assert r["settings"]["augment"] is True and r["settings"]["lr_body"] == pytest.approx(1e-4)
        assert "eval mode" in r["settings"]["batchnorm"]
        # BatchNorm statistics are the "ImageNet" ones still (--bn frozen).
        assert torch.equal(w["body.bn1.running_mean"], pre["bn1.running_mean"])


def test_gradual_unfreezes_the_body_stage_by_stage_from_the_top(photos, tmp_path, weights,
                                                               monkeypatch):
    """Oracle: the body's weights at every epoch boundary. test_efficientnet has 5 stages; 4
    epochs of gradual train, by hand (ULMFiT in at most 4 phases): the head alone, then the top
    round(5/3) = 2 stages, the top round(10/3) = 3, all 5. A stage below the unfrozen ones
    must not move in its epoch; each unfrozen one must."""
    from cnnlab.models.transfer import TransferModel

    real = TransferModel.unfreeze
    at_epoch_start: list[dict[str, torch.Tensor]] = []
    models: list[TransferModel] = []

    def spy(self, n_stages):
        real(self, n_stages)
        if models:  # the first call is set_strategy's, before training
            at_epoch_start.append({k: v.detach().clone() for k, v in
                                   self.body.named_parameters()})
        models.append(self)

    monkeypatch.setattr(TransferModel, "unfreeze", spy)
    train(photos, tmp_path / "g", weights, strategy="gradual", epochs=4, early_stopping=0)
    stages = models[0].stages
    assert len(stages) == 5 and len(at_epoch_start) == 4
    final = {k.removeprefix("body."): v for k, v in
             load_file(str(tmp_path / "g" / "model.safetensors")).items()
             if k.startswith("body.")}
    ends = [*at_epoch_start[1:], final]
    for epoch, (unfrozen, start, end) in enumerate(zip([0, 2, 3, 5], at_epoch_start, ends,
                                                        strict=True), start=1):
        moved = [any(not torch.equal(start[n], end[n]) for n in stage) for stage in stages]
        assert moved == [i >= 5 - unfrozen for i in range(5)], epoch


def test_compare_runs_both_strategies_on_one_split(tmp_path, weights, monkeypatch):
    """On photos in class folders only (no train/test folders), so the split is drawn: it is
    drawn once, and both strategies train on its train photos and test on its test photos."""
    from cnnlab.data import splits

    data = make_photos(tmp_path / "gen", counts=(("flat", 10),)) / "flat"  # class folders only
    drawn = []
    real = splits.load_splits

    def spy(*args, **kwargs):
        drawn.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(splits, "load_splits", spy)
    r = train(data, tmp_path / "cmp", weights, compare=True, epochs=2, report=True)
    assert [row["strategy"] for row in r["rows"]] == ["freeze", "finetune"]
    assert len(drawn) == 1  # one split for both
    split = json.loads((tmp_path / "cmp" / "split.json").read_text())
    assert split["layout"] != "split folders"  # drawn, not given by the folders
    test_files = sorted(f for f, _ in split["test"])
    for s in ("freeze", "finetune"):
        sub = json.loads((tmp_path / "cmp" / s / "results.json").read_text())
        assert sub["n_train"] == len(split["train"]) and sub["n_test"] == len(test_files)
        rows = csv.DictReader((tmp_path / "cmp" / s / "predictions.csv").open())
        assert sorted({row["file"] for row in rows}) == test_files, s
        assert sub["settings"]["strategy"] == s
    assert "freeze/report.html" in (tmp_path / "cmp" / "report.html").read_text()


def test_compare_shows_both_strategies_as_steps_of_one_overall_bar(photos, tmp_path, weights):
    """Off a terminal every line names its step; on resume a finished strategy is kept."""
    import io

    config = FinetuneConfig(data=str(photos), backbone=BACKBONE, weights=str(weights),
                            workers=0, epochs=1, batch_size=8, report=False, compare=True)
    # freeze on cached features: one pass; finetune: forward + backward per epoch, then a test
    assert [finetune.compare_cost(config.for_strategy(s)) for s in finetune.COMPARED] == [1, 4]
    err = io.StringIO()
    finetune.run(config, RunDir.create("finetune", tmp_path / "cmp"), Reporter(err=err))
    lines = err.getvalue().splitlines()
    for k, strategy in enumerate(finetune.COMPARED, start=1):
        mine = [line for line in lines if line.startswith(f"[finetune {k}/2 {strategy}] ")]
        assert any(f"finetune: {strategy} " in line for line in mine), (strategy, lines)
    assert not [line for line in lines if not line.startswith("[finetune ")]
    err = io.StringIO()
    finetune.run(config, RunDir.open(tmp_path / "cmp"), Reporter(err=err), resume=True)
    assert "[finetune 2/2 finetune] finetune: finished earlier, kept" in err.getvalue()


# -------------------------------------------------------------------------- kill -9, resume


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_ends_as_an_uninterrupted_run(photos, tmp_path,
                                                                       weights):
    """finetune with augmentation (batch 4: 5 steps per epoch), killed by SIGKILL in the
    middle of its second and last epoch, resumed: the same metrics, predictions and weights
    as one run."""
    common = ["finetune", str(photos), "-m", BACKBONE, "--weights", str(weights), "--strategy",
              "finetune", "--epochs", "2", "--batch-size", "4", "--workers", "0", "-q",
              "--no-report"]
    straight = cli(*common, "--out", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = cli(*common, "--out", str(tmp_path / "b"), env={"CNNLAB_CRASH_AT": "step-7"})
    assert crashed.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "results.json").exists()
    resumed = cli("finetune", "--resume", str(tmp_path / "b"), "-q")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("top1_error", "val_accuracy", "val_loss", "train_accuracy", "selected_epoch",
                "per_class_accuracy", "epochs_run"):
        assert a[key] == b[key], key
    assert epochs_of(tmp_path / "a") == epochs_of(tmp_path / "b")
    assert (tmp_path / "a" / "predictions.csv").read_text() == \
        (tmp_path / "b" / "predictions.csv").read_text()
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def cli_main(*args: str) -> int:
    from cnnlab.cli import main

    return main(list(args))


def test_resume_refuses_new_settings(tmp_path, capsys):
    assert cli_main("finetune", "--resume", str(tmp_path), "--lr", "0.1") == 2
    err = capsys.readouterr().err
    assert "--lr cannot be given with it" in err and "only --epochs, --time-limit can" in err
    assert cli_main("finetune") == 2
    assert "give the DATA folder" in capsys.readouterr().err
    assert cli_main("finetune", "--resume", str(tmp_path)) == 2
    assert "not a cnnlab finetune run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ predict


def test_predict_on_the_checkpoint_reproduces_the_test_predictions(photos, tmp_path, weights):
    from cnnlab.tasks.predict import PredictConfig, predict

    train(photos, tmp_path / "run", weights, strategy="finetune", epochs=2)
    rows = list(csv.DictReader((tmp_path / "run" / "predictions.csv").open()))
    expected = {}
    for row in rows:
        expected.setdefault(row["file"], []).append((row["class"], float(row["probability"])))
    (photos / "test" / "red" / "bad.jpg").write_bytes(b"nope")
    records = list(predict(PredictConfig(str(tmp_path / "run"), (str(photos / "test"),),
                                         workers=0), Reporter(quiet=True)))
    errors = [r for r in records if "error" in r]
    assert [Path(r["file"]).name for r in errors] == ["bad.jpg"]
    got = {str(Path(r["file"]).relative_to(photos)): r["top"] for r in records if "top" in r}
    assert got.keys() == expected.keys()
    for f, top in got.items():
        assert [g["class"] for g in top] == [c for c, _ in expected[f]]
        assert [g["probability"] for g in top] == pytest.approx([p for _, p in expected[f]],
                                                                abs=1e-5)


def test_predict_cli_json_and_errors(photos, tmp_path, weights, capsys):
    train(photos, tmp_path / "run", weights, epochs=1)
    assert cli_main("predict", str(tmp_path / "run"), str(photos / "test" / "red" / "0.png"),
                    "--json", "--workers", "0", "-q") == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["top"][0]["class"] in COLOURS and len(record["top"]) == 3
    (tmp_path / "x.jpg").write_bytes(b"bad")
    assert cli_main("predict", str(tmp_path / "run"), str(tmp_path / "x.jpg"), "-q",
                    "--workers", "0") == 2
    out = capsys.readouterr()
    assert "skipped" in out.out and "no photo could be classified" in out.err
    assert cli_main("predict", str(tmp_path), str(tmp_path / "x.jpg")) == 2
    assert f"did you mean {tmp_path / 'run'}?" in capsys.readouterr().err
    assert cli_main("predict", str(tmp_path / "x.jpg"), str(tmp_path / "x.jpg")) == 2
    assert "neither a finetune run directory" in capsys.readouterr().err
    assert cli_main("predict", "no_such_model", str(tmp_path / "x.jpg")) == 2
    assert "unknown model" in capsys.readouterr().err


def test_predict_names_a_control_character_safely(tmp_path, capsys):
    from cnnlab.cli.predict import _safe

    assert _safe("a\x1b[2Jb\r.jpg") == "a?[2Jb?.jpg"


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "all"}, "--strategy"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"lr": 0.0}, "--lr"),
        ({"optimizer": "adam"}, "--optimizer"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"split": (0.5, 0.5, 0.5)}, "add up to 1"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"bn": "off"}, "--bn"),
        ({"top_k": 0}, "--top-k"),
        ({"precision": "fp16"}, "--precision"),
        ({"keep": "first"}, "--keep"),
        ({"early_stopping": 3}, "--early-stopping needs --keep best"),
        ({"head_fit": "sgd"}, "--head-fit must be one of lbfgs, epochs"),
        ({"head_fit": "lbfgs", "strategy": "finetune"}, "--head-fit lbfgs needs --strategy"),
        ({"head_fit": "lbfgs", "augment": True}, "--head-fit lbfgs needs"),
        ({"head_fit": "lbfgs", "cache": False}, "--head-fit lbfgs needs"),
        ({"head_fit": "lbfgs", "epochs": 5}, "--epochs and --lr apply to --head-fit epochs"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(CnnlabError, match=message):
        FinetuneConfig(data="x", **settings)


def test_bad_backbones(photos, tmp_path, capsys):
    assert cli_main("finetune", str(photos), "-m", "resnet_18_typo", "--out",
                    str(tmp_path / "r")) == 2
    assert "unknown model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing left behind
    assert cli_main("finetune", str(photos), "-m", "alexnet-paper", "--out",
                    str(tmp_path / "r")) == 2
    assert "no pretrained ImageNet weights" in capsys.readouterr().err


def test_bad_data_is_one_line(tmp_path, weights, capsys):
    assert cli_main("finetune", str(tmp_path / "missing"), "-m", BACKBONE, "--weights",
                    str(weights), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folder not found" in err


def test_help_is_instant_and_lists_the_strategies():
    proc = subprocess.run([sys.executable, "-c", "import sys; from cnnlab.cli import main; "
                           "main(['finetune', '--help'])"], capture_output=True, text=True,
                          timeout=60)
    assert "freeze" in proc.stdout and "gradual" in proc.stdout and "--compare" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", "import sys; from cnnlab.cli.finetune import "
                           "add_parser; from cnnlab.cli.predict import add_parser as p; "
                           "print('torch' in sys.modules)"], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "False"


def test_help_says_validation_chooses_the_epoch_only_with_keep_best(capsys, monkeypatch):
    """The default keeps the last epoch (test_outputs_of_a_run): no sentence of the help may say
    that validation chooses the epoch kept without saying it is --keep best that does."""
    import re

    from cnnlab.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    sentences = re.split(r"(?<=[.;:])\s", text)
    choosing = [s for s in sentences if re.search(r"choos\w* the epoch|picks? the (best|epoch)",
                                                  s)]
    assert choosing and all("--keep best" in s for s in choosing), choosing
    assert re.search(r"--keep \{last,best\}.*lowest validation loss \(last\)", text)


def test_help_describes_every_strategy_the_config_accepts(capsys):
    """The help's "Strategies:" has an entry for each of FinetuneConfig's strategies, and auto's
    states the threshold the rule uses."""
    from cnnlab.cli import main
    from cnnlab.tasks.finetune.config import STRATEGIES

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    section = out.split("Strategies:\n", 1)[1].split("\n--compare", 1)[0]
    entries = [line.split()[0] for line in section.splitlines() if line.startswith("  ")
               and not line.startswith("   ")]
    assert entries == list(STRATEGIES)
    auto = section.split("  auto ", 1)[1]
    assert f"at most {finetune.AUTO_PARTIAL_MAX_PER_CLASS} per class" in " ".join(auto.split())


def test_summary_line_says_the_test_photos_were_held_out(capsys):
    """The line under the table says what the test error was measured on, in words a reader
    understands (it said "24 photos that chose nothing")."""
    from cnnlab.cli.finetune import print_results
    from cnnlab.results import Result

    row = {"strategy": "freeze", "epochs": 0, "selected_epoch": None, "train_accuracy": 99.0,
           "val_accuracy": None, "top1_error": 20.833, "top1_interval": None,
           "head_fit": "lbfgs", "cv_accuracy": 77.7, "top_k": 3, "topk_error": None,
           "seconds": 1.25, "n_test": 24}
    results = {"backbone": "made-up-net", "run_dir": "runs/x"}
    print_results(Result(command="finetune", results=results, rows=[row], run_dir=None),
                  Reporter())
    out = " ".join(capsys.readouterr().out.split())
    assert ("test error: measured once, on 24 held-out photos used for no training and no "
            "choice; backbone made-up-net") in out
    assert "chose nothing" not in out


def test_precision_auto_is_trains_and_the_run_records_what_it_used(
        photos, tmp_path, weights, monkeypatch):
    """--precision auto means what train's does (hardware.resolve_precision: bf16 where the CPU
    has native bf16 or the GPU supports it, else fp32): the engine trains at the resolved
    precision, and settings and environment.json record it and why. Checked both ways on any
    machine by setting what the CPU is said to have."""
    from cnnlab import engine, hardware
    from cnnlab.cli import build_parser

    assert build_parser().parse_args(["finetune", "x", "--precision", "auto"]).precision == \
        "auto"
    used = []
    real_fit = engine.fit

    def fit(*args, **kwargs):
        used.append(args[4].precision)  # the FitConfig the engine trains with
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(engine, "fit", fit)
    for native, asked, expected in ((True, "auto", "bf16"), (False, "auto", "fp32"),
                                    (True, "fp32", "fp32")):
        flags = frozenset({"avx512_bf16"} if native else {"avx2"})
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert hardware.resolve_precision(asked, "cpu")[0] == expected
        run = tmp_path / f"{native}-{asked}"
        r = train(photos, run, weights, precision=asked, epochs=1, device="cpu")
        env = json.loads((run / "environment.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert r["settings"]["precision"] == env["precision"] == expected
        assert r["settings"]["precision_reason"] == env["precision_reason"]
        assert env["precision_reason"].startswith("auto:") == (asked == "auto")
        assert config["precision"] == asked  # a resume resolves it again, on its machine
    assert used == ["bf16", "fp32", "fp32"]
    # A fitted head trains no epochs: no precision to record.
    r = train_default(photos, tmp_path / "fitted", weights, precision="auto")
    assert r["settings"]["precision"] is None


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_hymenoptera_freeze_with_lite0(shared_data, tmp_path):
    """The real thing: EfficientNet-Lite0, frozen, on ants and bees. val/ is the held-out test
    set (153 photos); PyTorch's tutorial reaches ~95% there by fine-tuning ResNet-18."""
    data = shared_data("hymenoptera")
    config = FinetuneConfig(data=str(data), backbone="efficientnet_lite0", epochs=10,
                            report=False)
    r = finetune.run(config, RunDir.create("finetune", tmp_path / "run"), Reporter(quiet=True))
    assert (r["n_train"], r["n_val"], r["n_test"]) == (196, 49, 153)
    assert r["test_accuracy"] >= 90.0


@pytest.mark.slow
def test_hymenoptera_default_head_fit_with_lite0(shared_data, tmp_path):
    """The default head (L-BFGS, cross-validated L2) on Lite0 features keeps >= 94% there."""
    data = shared_data("hymenoptera")
    config = FinetuneConfig(data=str(data), backbone="efficientnet_lite0", report=False)
    r = finetune.run(config, RunDir.create("finetune", tmp_path / "run"), Reporter(quiet=True))
    assert r["settings"]["head_fit"] == "lbfgs" and r["head_fit"]["photos"] == 196 + 49
    assert r["test_accuracy"] >= 94.0


# ------------------------------------------------------------------------- Wilson interval


def test_wilson_interval_of_5_wrong_in_24_by_hand():
    # Wilson (1927): (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), by hand with
    # p = 5/24 = 0.208333, z = 1.959964, z^2 = 3.841459: denominator 1.160061, centre
    # (0.208333 + 0.080030) / 1.160061 = 0.248576, half-width 1.959964 * sqrt(0.006872 +
    # 0.001667) / 1.160061 = 0.156128, so 0.092448 to 0.404704.
    low, high = wilson(5, 24)
    assert low == pytest.approx(0.092448, abs=2e-6)
    assert high == pytest.approx(0.404705, abs=2e-6)
    assert wilson(0, 24)[0] == 0.0 and wilson(24, 24)[1] == 1.0  # never outside [0, 1]
    assert wilson(0, 24)[1] == pytest.approx(3.841459 / (24 + 3.841459), abs=1e-6)
    e = error_interval(5, 24)
    assert (e["wrong"], e["n"]) == (5, 24) and e["error"] == pytest.approx(100 * 5 / 24)
    assert e["low"] == pytest.approx(9.2448, abs=1e-3) and e["high"] == pytest.approx(40.4705,
                                                                                      abs=1e-3)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_interval_in_results_table_and_reports(photos, tmp_path, weights):
    from cnnlab.cli.finetune import _with_interval

    r = train_default(photos, tmp_path / "run", weights, report=True)
    wrong = round(r["n_test"] * r["top1_error"] / 100)
    expected = error_interval(wrong, r["n_test"])
    assert r["top1_interval"] == pytest.approx(expected)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["top1_interval"]["method"] == "wilson"
    assert _with_interval(20.833, error_interval(5, 24)) == "20.8% (9.2-40.5)"
    cell = f"{expected['low']:.1f}-{expected['high']:.1f}%"
    assert f"95% CI {cell}" in (tmp_path / "run" / "report.md").read_text()
    assert f"95% CI {cell}" in (tmp_path / "run" / "report.html").read_text()


def test_compare_rows_carry_the_interval(photos, tmp_path, weights):
    r = train_default(photos, tmp_path / "cmp", weights, compare=True, epochs=None,
                      report=True)
    freeze, tuned = r["rows"]
    assert freeze["head_fit"] == "lbfgs" and tuned["head_fit"] == "epochs"
    for row in r["rows"]:
        assert row["top1_interval"]["n"] == 6 and row["top1_interval"]["low"] <= row[
            "top1_error"] <= row["top1_interval"]["high"]
    md = (tmp_path / "cmp" / "report.md").read_text()
    i = r["rows"][1]["top1_interval"]
    assert f"({i['low']:.1f}-{i['high']:.1f})" in md and "L-BFGS" in md


# ------------------------------------------------------------------------------- head fit


def _toy(n=60, d=12, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.randn(n, d, generator=g)
    x[:, :c] += 1.5 * torch.eye(c)[y]  # overlapping classes: a finite optimum at any l2
    return x, y


@pytest.mark.parametrize("l2", [1e-3, 3e-2, 0.3])
def test_head_fit_reaches_the_loss_of_scikit_learn(l2):
    """The same objective, solved by scikit-learn's lbfgs LogisticRegression with
    C = 1 / (l2 * n): our full-batch L-BFGS reaches its loss within 1e-7."""
    from sklearn.linear_model import LogisticRegression

    x, y = _toy()
    n = len(y)
    ours = head_fit.fit_linear(x, y, 3, l2, scale=False)
    sk = LogisticRegression(C=1 / (l2 * n), tol=1e-12, max_iter=100_000).fit(
        x.double().numpy(), y.numpy())
    theirs = float(head_fit.objective(torch.tensor(sk.coef_), torch.tensor(sk.intercept_),
                                      x.double(), y, l2))
    assert ours.loss == pytest.approx(theirs, abs=1e-7)
    assert ours.loss <= theirs + 1e-9
    # The tolerance is meaningful: a few iterations short of convergence misses it.
    early = head_fit.fit_linear(x, y, 3, l2, scale=False, max_iter=3)
    assert early.loss > theirs + 1e-4


def test_scaled_fit_maps_back_to_raw_features():
    """Fitted on centred features divided by their RMS, the head returned works on raw ones:
    its logits on raw x equal the scaled problem's, whose loss matches scikit-learn's."""
    from sklearn.linear_model import LogisticRegression

    x, y = _toy()
    x = x * torch.linspace(0.1, 50, x.shape[1]) + 7  # badly scaled, shifted features
    l2 = 1e-2
    head = head_fit.fit_linear(x, y, 3, l2)
    xd = x.double()
    xs = (xd - xd.mean(0)) / (xd - xd.mean(0)).pow(2).mean().sqrt()
    assert not torch.allclose(xs, (xd - xd.mean(0)) / xd.std(0))  # one scale, not per feature
    sk = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=100_000).fit(
        xs.numpy(), y.numpy())
    theirs = float(head_fit.objective(torch.tensor(sk.coef_), torch.tensor(sk.intercept_),
                                      xs, y, l2))
    assert head.loss == pytest.approx(theirs, abs=1e-7)
    sk_logits = torch.tensor(sk.decision_function(xs.numpy()))
    assert torch.allclose(head.logits(x), sk_logits, atol=1e-4)


def test_stratified_folds_keep_every_class_in_every_training_fold():
    y = torch.tensor([0] * 3 + [1] * 8 + [2] * 5)
    k = head_fit.n_folds(y)
    assert k == 3  # the smallest class has 3 photos
    folds = head_fit.stratified_folds(y, k, seed=0)
    sizes = torch.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for f in range(k):
        assert set(y[folds != f].tolist()) == {0, 1, 2}
    assert head_fit.n_folds(torch.tensor([0, 0, 1])) == 0  # one photo of a class: no CV


def test_cross_validation_prefers_a_strong_l2_on_noise_and_a_weak_one_on_signal():
    """Noise: nothing to learn, the strongest L2 (weights near 0) predicts best. Signal that
    only a large weight can reach (the class is the small difference of two large, correlated
    features): the weakest L2 wins, and held-out accuracy is high. A CV that ignored its
    scores, or scored the training rows, would pick the same L2 for both."""
    g = torch.Generator().manual_seed(1)
    n = 60
    y = torch.arange(n) % 2
    noise = torch.randn(n, 200, generator=g)
    base, diff = 3 * torch.randn(n, generator=g), torch.randn(n, generator=g)
    signal = torch.cat([torch.stack([base + diff, base - diff], 1),
                        torch.randn(n, 3, generator=g)], 1)
    on_noise = head_fit.select_and_fit(noise, y, 2)
    on_signal = head_fit.select_and_fit(signal, (diff > 0).long(), 2)
    assert on_noise.l2 == max(head_fit.L2_GRID) and on_noise.best["cv_accuracy"] < 70
    assert on_signal.l2 == min(head_fit.L2_GRID) and on_signal.best["cv_accuracy"] >= 85


def test_cross_validation_never_sees_test_photos_and_the_refit_precedes_the_test(
        photos, tmp_path, weights, monkeypatch):
    """Spies on the solver and on the test measurement: cross-validation gets exactly the
    train + validation features, no test photo's; the last fit is the refit on all of them,
    and it happens before the single test measurement."""
    from cnnlab.models.backbone_choice import frozen_features

    events: list[tuple] = []
    real_cv, real_fit, real_scores = (head_fit.cross_validate, head_fit.fit_linear,
                                      pipeline.score)

    def cv(x, y, *a, **kw):
        events.append(("cv", x.clone()))
        return real_cv(x, y, *a, **kw)

    def fit(x, y, *a, **kw):
        events.append(("fit", x.clone()))
        return real_fit(x, y, *a, **kw)

    def scores(logits, *a, **kw):
        events.append(("test", len(logits)))
        return real_scores(logits, *a, **kw)

    monkeypatch.setattr(head_fit, "cross_validate", cv)
    monkeypatch.setattr(head_fit, "fit_linear", fit)
    monkeypatch.setattr(pipeline, "score", scores)
    r = train_default(photos, tmp_path / "run", weights)
    assert r["head_fit"]["method"] == "lbfgs" and r["head_fit"]["parts"] == ["train", "val"]

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    root = photos.resolve()
    paths = {part: [root / f for f, _ in split[part]] for part in ("train", "val", "test")}
    assert not set(paths["test"]) & (set(paths["train"]) | set(paths["val"]))
    feats = {part: frozen_features(BACKBONE, weights, paths[part], Reporter(quiet=True),
                                   device="cpu", workers=0, draft=True).rows.double()
             for part in paths}
    seen = torch.cat([feats["train"], feats["val"]])
    (_, cv_x), = [e for e in events if e[0] == "cv"]
    assert torch.allclose(cv_x.double(), seen, atol=1e-6)
    for row in feats["test"]:  # no test photo's features anywhere in the cross-validation
        assert not (cv_x.double() - row).abs().max(1).values.lt(1e-6).any()
    kinds = [e[0] for e in events]
    assert kinds.count("test") == 1 and kinds[-1] == "test"
    refit = events[-2]
    assert refit[0] == "fit" and torch.allclose(refit[1].double(), seen, atol=1e-6)
    assert all(len(e[1]) < len(seen) for e in events[1:-2])  # the CV fits: folds only


def test_default_head_fit_resolution():
    assert FinetuneConfig(data="x").head_fit == "lbfgs"
    assert FinetuneConfig(data="x", epochs=30).head_fit == "epochs"  # as before
    assert FinetuneConfig(data="x", lr=1e-2).head_fit == "epochs"
    assert FinetuneConfig(data="x", augment=True).head_fit == "epochs"
    assert FinetuneConfig(data="x", strategy="finetune").head_fit == "epochs"
    tuned = FinetuneConfig(data="x", compare=True).for_strategy("finetune")
    assert tuned.head_fit == "epochs"


def test_fitted_head_run_outputs(photos, tmp_path, weights):
    r = train_default(photos, tmp_path / "run", weights, report=True)
    run = tmp_path / "run"
    assert r["epochs_run"] == 0 and r["stopped"] == "converged" and r["selected"] == "fit"
    assert r["val_accuracy"] is None  # validation photos were fitted on
    assert r["settings"]["optimizer"] == "lbfgs" and r["settings"]["lr_head"] is None
    assert r["head_fit"]["l2"] in head_fit.L2_GRID and len(r["head_fit"]["cv"]) == len(
        head_fit.L2_GRID)
    assert r["top1_error"] == 0.0  # three colours: separable
    for name in ("model.safetensors", "predictions.csv", "report.md", "report.html"):
        assert (run / name).is_file(), name
    assert not (run / "curves.png").exists() and not (run / "last.json").exists()
    assert "cross-validation" in (run / "report.md").read_text()
    # The exported network is the fitted head on the body: `cnnlab predict` agrees.
    from cnnlab.tasks.predict import PredictConfig, predict

    rows = list(csv.DictReader((run / "predictions.csv").open()))
    expected = {row["file"]: row["class"] for row in rows if row["rank"] == "1"}
    records = list(predict(PredictConfig(str(run), (str(photos / "test"),), workers=0),
                           Reporter(quiet=True)))
    got = {str(Path(r["file"]).relative_to(photos)): r["top"][0]["class"] for r in records}
    assert got == expected


# ---------------------------------------------------------------------------- --model auto

WORSE = "timm/test_resnet"


@pytest.fixture(scope="module")
def useless_weights(tmp_path_factory):
    """test_resnet with every weight and BatchNorm statistic zero: it maps every photo to the
    same feature vector, so no head on it can beat chance."""
    import timm

    model = timm.create_model("test_resnet")
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "test_resnet_zero.pth"
    torch.save(state, path)
    return path


def test_model_auto_picks_the_backbone_with_the_best_cross_validation(
        photos, tmp_path, weights, useless_weights, monkeypatch):
    from cnnlab.models import backbone_choice

    # The useless backbone first: a choice by list order would take it.
    monkeypatch.setattr(backbone_choice, "available_backbones",
                        lambda: [(WORSE, useless_weights), (BACKBONE, weights)])
    r = train_default(photos, tmp_path / "run", weights=None, backbone="auto", report=True)
    rows = {row["backbone"]: row for row in r["backbone_choice"]}
    assert r["backbone"] == BACKBONE and rows[BACKBONE]["chosen"] and not rows[WORSE]["chosen"]
    assert rows[WORSE]["cv_log_loss"] == pytest.approx(math.log(3), abs=0.05)  # chance
    assert rows[BACKBONE]["cv_log_loss"] < 0.5 * rows[WORSE]["cv_log_loss"]
    assert all(row["photos"] == r["n_train"] + r["n_val"] for row in rows.values())  # no test
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["backbone"] == BACKBONE  # a resume uses the chosen one
    html = (tmp_path / "run" / "report.html").read_text()
    assert "--model auto" in html and WORSE in html and "<b>chosen</b>" in html
    # Reversed order, same choice.
    monkeypatch.setattr(backbone_choice, "available_backbones",
                        lambda: [(BACKBONE, weights), (WORSE, useless_weights)])
    again = train_default(photos, tmp_path / "run2", weights=None, backbone="auto")
    assert again["backbone"] == BACKBONE


def test_default_backbone_is_auto_only_with_several_here(photos, tmp_path, monkeypatch):
    from cnnlab.models import backbone_choice

    monkeypatch.setattr(backbone_choice, "available_backbones", lambda: [("efficientnet_lite0",
                                                                          None)])
    config = finetune.resolve_backbone(FinetuneConfig(data=str(photos)),
                                       RunDir.create("finetune", tmp_path / "a"),
                                       Reporter(quiet=True))
    assert config.backbone == finetune.DEFAULT_BACKBONE
    with pytest.raises(CnnlabError, match="--weights belongs to one backbone"):
        finetune.resolve_backbone(FinetuneConfig(data=str(photos), backbone="auto",
                                                 weights="w.pth"),
                                  RunDir.create("finetune", tmp_path / "b"), Reporter(quiet=True))


def train_default(data, out, weights, **kw) -> dict:
    """A run with the new defaults (no --epochs): the L-BFGS head."""
    settings = {"backbone": BACKBONE, "weights": str(weights) if weights else None,
                "workers": 0, "report": False, **kw}
    config = FinetuneConfig(data=str(data), **settings)
    return finetune.run(config, RunDir.create("finetune", out), Reporter(quiet=True))


def test_resume_of_a_fitted_head_run_refits_to_the_same_head(photos, tmp_path, weights):
    first = train_default(photos, tmp_path / "run", weights)
    before = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert cli_main("finetune", "--resume", str(tmp_path / "run"), "-q") == 0
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert again["head_fit"]["l2"] == first["head_fit"]["l2"]
    assert again["top1_interval"] == first["top1_interval"]
    assert torch.allclose(before["head.weight"], after["head.weight"], atol=1e-6)
    # --epochs asks for the other head fit: refused in one line, not silently switched.
    assert cli_main("finetune", "--resume", str(tmp_path / "run"), "--epochs", "5") == 2


def test_compare_epochs_go_to_the_trained_strategy_and_the_frozen_head_stays_fitted():
    from cnnlab.tasks.finetune import FinetuneConfig

    cfg = FinetuneConfig(data="d", compare=True, epochs=8)
    freeze, tuned = cfg.for_strategy("freeze"), cfg.for_strategy("finetune")
    assert freeze.head_fit == "lbfgs" and freeze.epochs is None
    assert tuned.epochs_ == 8 and tuned.strategy == "finetune"
    # Without --compare, --epochs still means an epoch-trained frozen head.
    assert FinetuneConfig(data="d", epochs=8).head_fit == "epochs"
