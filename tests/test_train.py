"""`cnnlab train` on a small stratified subset of the shared CIFAR-10 copy: results against an
independent evaluation, exact resume after a real `kill -9`, and a real 2-process torchrun run
that matches one process and resumes in one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.tasks.train import TrainConfig

SMALL = ["--limit-per-class", "20", "--epochs", "2", "--recipe", "lab", "-m", "simple-cnn",
         "--threads", "1", "--no-report"]


@pytest.fixture
def cifar(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return shared_data("cifar10", "cifar10-jpg.zip")


def cli(*args: str, env: dict | None = None, torchrun: int = 0):
    cmd = [sys.executable, "-m", "cnnlab", "train", *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", "-m", "cnnlab", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    meta = json.loads((run / f"{which}.json").read_text())
    return load_file(run / meta["weights"])


def test_lab_recipe_results_equal_an_independent_evaluation(cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cifar), *SMALL, "--out", str(out), "-q"]) == 0
    # The last line says where the run is (and, with a report, the report: test_sweep).
    assert capsys.readouterr().out.splitlines()[-1] == f"run directory: {out}"
    res = json.loads((out / "results.json").read_text())
    (m,) = res["models"]
    assert m["model"] == "simple-cnn" and m["params"] == 2_122_186 and m["seeds"] == 1
    assert (m["lr"], m["batch_size"]) == (1e-3, 32)  # the lab's Adam 1e-3, batch 32
    assert res["n_train"] == 200 and res["n_test"] == 200
    # Oracle: the saved weights in a fresh model, the lab's Normalize(0.5, 0.5), plain torch.
    from cnnlab.data.cifar import load_cifar
    from cnnlab.models.registry import create_model

    data = load_cifar(cifar, limit_per_class=20)
    model = create_model("simple-cnn", num_classes=10)
    model.load_state_dict(weights(out / "simple-cnn-seed0"))
    model.eval()
    with torch.no_grad():
        x = (data.test_x.float() / 255 - 0.5) / 0.5
        acc = float((model(x).argmax(1) == data.test_y).float().mean())
    assert res["runs"][0]["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    assert 100 * acc == pytest.approx(m["test_accuracy_mean"])
    epochs = [r for r in map(json.loads, (out / "simple-cnn-seed0" / "metrics.jsonl")
              .read_text().splitlines()) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["step"] == 2 * (200 // 32)
    # --precision auto (the default) kept the lab recipe's fp32: the recipe's choice, and said so.
    env = json.loads((out / "simple-cnn-seed0" / "environment.json").read_text())
    why = "the lab-simple-cnn recipe's own (--precision auto keeps a recipe's precision)"
    assert (env["precision"], env["precision_reason"]) == ("fp32", why)
    assert (m["precision"], res["runs"][0]["precision_reason"]) == ("fp32", why)


def test_the_precision_reason_says_who_chose_it():
    from dataclasses import replace

    from cnnlab.tasks.train import precision_for, recipe_for

    cpu = torch.device("cpu")
    lab = TrainConfig(data="d", models=("simple-cnn",), recipe="lab")
    assert precision_for(lab, recipe_for(lab, "simple-cnn"), cpu)[1].startswith(
        "the lab-simple-cnn recipe's own")
    for asked in (replace(lab, precision="bf16"),
                  replace(lab, recipe_overrides=(("precision", "bf16"),))):
        assert precision_for(asked, recipe_for(asked, "simple-cnn"), cpu) == ("bf16", "asked for")
    fast = TrainConfig(data="d")  # the fast recipe leaves it to the machine
    precision, why = precision_for(fast, recipe_for(fast, "fast-cifar"), cpu)
    flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("flags") for f in line.split(":")[1].split()}
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert (precision, why.startswith("auto: native bf16 on the CPU")) == (
        ("bf16", True) if native else ("fp32", False))


def test_val_fraction_tests_the_epoch_of_the_best_validation_accuracy(cifar, tmp_path):
    """--val-fraction: validation picks the weights (the `best` checkpoint), the test set only
    measures them, as the help says."""
    out = tmp_path / "run"
    args = [a if a != "2" else "5" for a in SMALL]  # 5 epochs
    assert main(["train", str(cifar), *args, "--lr", "0.003", "--val-fraction", "0.5",
                 "--out", str(out), "-q"]) == 0
    r = json.loads((out / "results.json").read_text())["runs"][0]
    epochs = [e for e in map(json.loads, (out / "simple-cnn-seed0" / "metrics.jsonl")
              .read_text().splitlines()) if e["kind"] == "epoch"]
    best = max(epochs, key=lambda e: e["val_accuracy"])  # the first of equals, as the engine
    # These settings were chosen so that the last epoch is not the best: else this proves nothing.
    assert best["epoch"] < 5
    assert (r["tested_epoch"], r["tested_checkpoint"]) == (best["epoch"], "best")
    assert r["val_accuracy"] == best["val_accuracy"] == r["best_val_accuracy"]
    # Oracle: the best checkpoint's weights in a fresh model, plain torch, the lab's Normalize.
    from cnnlab.data.cifar import load_cifar
    from cnnlab.models.registry import create_model

    data = load_cifar(cifar, limit_per_class=20)
    model = create_model("simple-cnn", num_classes=10)
    model.load_state_dict(weights(out / "simple-cnn-seed0", "best"))
    model.eval()
    with torch.no_grad():
        x = (data.test_x.float() / 255 - 0.5) / 0.5
        acc = float((model(x).argmax(1) == data.test_y).float().mean())
    assert r["test_accuracy"] == pytest.approx(acc, abs=1e-6)


def test_kill_9_then_resume_ends_as_an_uninterrupted_run(cifar, tmp_path):
    env = {"CNNLAB_CACHE": os.environ["CNNLAB_CACHE"]}
    assert cli(str(cifar), *SMALL, "--out", str(tmp_path / "a"), "-q", env=env).returncode == 0
    crashed = cli(str(cifar), *SMALL, "--out", str(tmp_path / "b"), "-q",
                  env={**env, "CNNLAB_CRASH_AT": "step-8"})  # mid-epoch 2 (6 steps/epoch)
    assert crashed.returncode == -signal.SIGKILL
    resumed = cli("--resume", str(tmp_path / "b"), "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = weights(tmp_path / "a" / "simple-cnn-seed0")
    b = weights(tmp_path / "b" / "simple-cnn-seed0")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "a" / "results.json").read_text())["runs"][0]
    rb = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    assert ra["test_accuracy"] == rb["test_accuracy"] and ra["steps"] == rb["steps"]


def test_the_default_fast_recipe_end_to_end_with_kill_9_and_resume(cifar, tmp_path):
    """The default recipe as it ships (lookahead, flip-translate TTA, precision auto, the
    whitening layer) on 20 images per class: 4 steps per epoch, 4 epochs, lookahead every 5
    steps. Killed at step 10, the run resumes from its step-8 checkpoint, whose slow weights
    (averaged at step 5) differ from the trained ones: only restoring the lookahead state too
    ends it as the uninterrupted run."""
    import yaml

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"models": ["fast-cifar"],
                                      "model_options": {"widths": [32, 64, 128]}}))
    args = ["--config", str(config), "--limit-per-class", "20", "--epochs", "4",
            "--batch-size", "50", "--threads", "1", "--no-report", "-q"]
    env = {"CNNLAB_CACHE": os.environ["CNNLAB_CACHE"]}
    straight = cli(str(cifar), *args, "--out", str(tmp_path / "a"), env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = cli(str(cifar), *args, "--out", str(tmp_path / "b"),
                  env={**env, "CNNLAB_CRASH_AT": "step-10"})
    assert crashed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "b" / "fast-cifar-seed0" / "last.json").read_text())[
        "step"] == 8
    resumed = cli("--resume", str(tmp_path / "b"), "-q", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = weights(tmp_path / "a" / "fast-cifar-seed0")
    b = weights(tmp_path / "b" / "fast-cifar-seed0")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "a" / "results.json").read_text())["runs"][0]
    rb = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    assert ra["steps"] == rb["steps"] == 16 and ra["test_accuracy"] == rb["test_accuracy"]
    # The defaults did run: the fast recipe, its TTA, and a lookahead state in the checkpoint.
    assert (ra["recipe"], ra["tta"]) == ("fast", "flip-translate")
    from cnnlab import checkpoints

    assert checkpoints.load(tmp_path / "b" / "fast-cifar-seed0", "last").state["extra"]


@pytest.mark.dist
def test_torchrun_two_processes_match_one_and_resume_in_one(cifar, tmp_path):
    env = {"CNNLAB_CACHE": os.environ["CNNLAB_CACHE"]}
    one = cli(str(cifar), *SMALL, "--out", str(tmp_path / "one"), "-q", env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    args = [a if a != "2" else "1" for a in SMALL]  # 1 epoch on 2 ranks, then 1 more in 1
    two = cli(str(cifar), *args, "--out", str(tmp_path / "two"), "-q", env=env, torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    cfg["epochs"] = 2
    (tmp_path / "two" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "two" / "simple-cnn-seed0" / "results.json").unlink()
    cont = cli("--resume", str(tmp_path / "two"), "-q", env=env)
    assert cont.returncode == 0, cont.stderr[-2000:]
    # Each rank takes half of every global batch of 32 and DDP averages the gradients: the same
    # optimisation as one process, up to float summation order.
    a = weights(tmp_path / "one" / "simple-cnn-seed0")
    b = weights(tmp_path / "two" / "simple-cnn-seed0")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3), k


def test_bad_settings_are_one_line_without_any_data(tmp_path, capsys):
    """Settings are checked before the data is looked at: no CIFAR needed here."""
    with pytest.raises(CnnlabError, match="lab trained only"):
        from cnnlab.tasks.train import recipe_for

        recipe_for(TrainConfig(data="x", models=("fast-cifar",), recipe="lab"), "fast-cifar")
    with pytest.raises(CnnlabError, match="seeds"):
        TrainConfig(data="x", seeds=0)
    assert main(["train", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "r")]) == 2
    assert "data not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["train", str(tmp_path / "nope.zip"), "-m", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and len(err.strip().splitlines()) == 1


def test_too_few_images_for_a_batch_is_one_line(tmp_path, capsys, cifar):
    assert main(["train", str(cifar), "--limit-per-class", "5", "--out", str(tmp_path / "s"),
                 "-q"]) == 2
    assert "do not make one batch" in capsys.readouterr().err


def test_plus_minus_is_the_95_percent_interval_everywhere_not_a_standard_deviation():
    """Issue 26: "±" means one thing in every table: the half-width of the 95% interval of the
    mean over seeds. Seeds at 60, 62, 64%: std 2.0; half-width t(0.975, 2) * 2 / sqrt(3) =
    4.303 * 1.1547 = 4.97 (by hand)."""
    from cnnlab.report.train import PM, accuracy_text, summary_rows

    results = {"models": [{"model": "m", "test_accuracy_mean": 62.0, "test_accuracy_std": 2.0,
                           "seeds": 3},
                          {"model": "one", "test_accuracy_mean": 50.0, "test_accuracy_std": 0.0,
                           "seeds": 1}],
               "runs": [{"model": "m", "test_accuracy": a} for a in (0.60, 0.62, 0.64)]
               + [{"model": "one", "test_accuracy": 0.5}]}
    assert accuracy_text(results, results["models"][0]) == "62.00% ± 4.97"
    assert accuracy_text(results, results["models"][1]) == "50.00%"  # one seed: no ±
    assert summary_rows(results)[0]["test_accuracy_ci95"] == pytest.approx(4.968, abs=1e-3)
    assert "95% CI half-width" in PM
