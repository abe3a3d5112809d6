"""The training engine: exact resume (also after a real `kill -9`), checkpoints as one unit,
the NaN guard, early stopping, and DDP under a real `torchrun` equal to one process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab import checkpoints
from cnnlab.dist import DistInfo, shard_indices
from cnnlab.engine import FitConfig, fit
from cnnlab.errors import CnnlabError
from cnnlab.progress import Reporter
from cnnlab.recipes import warmup_cosine
from cnnlab.rng import epoch_generator
from cnnlab.runs import RunDir

JOB = Path(__file__).with_name("engine_job.py")


def job(out: Path, *args: str, env: dict | None = None, torchrun: int = 0):
    cmd = [sys.executable, str(JOB), str(out), *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", str(JOB), str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def epochs_of(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("elapsed_s", None)
    return recs


def test_resume_in_two_invocations_equals_one_run(tmp_path):
    straight = summary(job(tmp_path / "a", "--epochs", "4", "--dropout", "0.3"))
    summary(job(tmp_path / "b", "--epochs", "2", "--dropout", "0.3"))
    resumed = summary(job(tmp_path / "b", "--epochs", "4", "--dropout", "0.3", "--resume"))
    assert resumed["weights"] == straight["weights"]  # bit for bit: dropout RNG restored too
    assert epochs_of(tmp_path / "b") == epochs_of(tmp_path / "a")


@pytest.mark.parametrize("crash_at", ["step-15", "last:files-written", "epoch-2:end"])
def test_kill_9_then_resume_ends_as_an_uninterrupted_run(tmp_path, crash_at):
    """6 steps per epoch: step-15 dies mid-epoch 3 (step lines logged after the epoch-2
    checkpoint), last:files-written dies after the first checkpoint's files but before its JSON,
    epoch-2:end right after the epoch-2 checkpoint."""
    straight = summary(job(tmp_path / "a", "--epochs", "4", "--dropout", "0.3"))
    crashed = job(tmp_path / "b", "--epochs", "4", "--dropout", "0.3",
                  env={"CNNLAB_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL
    if crash_at == "last:files-written":
        # The first checkpoint's files exist but no JSON names them: nothing to resume from.
        assert not checkpoints.exists(tmp_path / "b", "last")
        assert list((tmp_path / "b" / "checkpoints").glob("last-*"))
        proc = job(tmp_path / "b", "--epochs", "4", "--dropout", "0.3", "--resume")
        assert proc.returncode != 0 and "nothing to resume" in proc.stderr
        return
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "ep')  # and a torn line, as a crash mid-write leaves
    resumed = summary(job(tmp_path / "b", "--epochs", "4", "--dropout", "0.3", "--resume"))
    assert resumed["weights"] == straight["weights"]
    assert epochs_of(tmp_path / "b") == epochs_of(tmp_path / "a")  # no duplicates, no torn line


def test_checkpoint_files_stay_consistent_after_a_crash_between_writes(tmp_path):
    w1 = {"w": torch.ones(3)}
    checkpoints.save(tmp_path, "last", w1, {"epoch": 1}, {"n": torch.tensor(1)})
    code = (f"import torch; from cnnlab import checkpoints; checkpoints.save({str(tmp_path)!r}, "
            "'last', {'w': torch.zeros(3)}, {'epoch': 2}, {'n': torch.tensor(2)})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          env={**os.environ, "CNNLAB_CRASH_AT": "last:files-written"})
    assert proc.returncode == -signal.SIGKILL
    ck = checkpoints.load(tmp_path, "last")
    assert ck.meta["epoch"] == 1 and ck.weights["w"].tolist() == [1, 1, 1]
    assert int(ck.state["n"]) == 1
    assert len(list((tmp_path / "checkpoints").iterdir())) == 4  # old pair + litter
    checkpoints.save(tmp_path, "last", {"w": torch.full((3,), 3.0)}, {"epoch": 3})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last-000003.safetensors"]


@pytest.mark.dist
def test_torchrun_two_ranks_equal_one_process_and_resume_in_one(tmp_path):
    one = summary(job(tmp_path / "one", "--epochs", "3"))
    two = summary(job(tmp_path / "two", "--epochs", "2", torchrun=2))
    assert two["epochs"] == 2
    # The 2-rank checkpoint continues in a single process.
    cont = summary(job(tmp_path / "two", "--epochs", "3", "--resume"))
    # Each rank takes half of the same global batch and DDP averages the gradients, so the
    # runs differ only by float summation order.
    for a, b in zip(cont["weights"], one["weights"], strict=True):
        assert abs(a - b) < 1e-5
    e1, e2 = epochs_of(tmp_path / "one"), epochs_of(tmp_path / "two")
    for a, b in zip(e1, e2, strict=True):
        assert a["kind"] == b["kind"] and a["step"] == b["step"]
        if a["kind"] == "epoch":  # step lines are rank 0's own window; epochs are all-reduced
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), key


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    run = RunDir(tmp_path)
    state = {"epoch": 0}

    def batches(epoch):
        state["epoch"] = epoch
        for k in range(0, 32, 8):
            xb = x[k : k + 8] * (1e30 if epoch == 2 else 1.0)  # epoch 3 blows up
            yield xb, y[k : k + 8]

    with pytest.raises(CnnlabError, match=r"loss became (nan|inf).*epoch 3.*last\.json"):
        fit(model, opt, batches, 4, FitConfig(epochs=5), run, Reporter(quiet=True))
    ck = checkpoints.load(tmp_path, "last")
    assert ck.meta["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in ck.weights.values())


def test_early_stopping_and_best_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.4, 0.9])

    def batches(epoch):
        yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    res = fit(model, opt, batches, 1, FitConfig(epochs=6, early_stopping=2), RunDir(tmp_path),
              Reporter(quiet=True), evaluate=lambda m: {"val_accuracy": next(scores)})
    assert res.stopped == "early-stopping" and res.epochs_done == 4
    assert res.best_epoch == 2 and res.best_metric == 0.7
    assert checkpoints.read_meta(tmp_path, "best")["epoch"] == 2


def test_shards_partition_each_epoch_and_depend_only_on_seed_and_epoch():
    for world in (1, 2, 3):
        parts = [shard_indices(50, epoch_generator(7, 3), DistInfo(r, world)) for r in range(world)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == 50 // world
        flat = torch.cat(parts).tolist()
        assert len(set(flat)) == len(flat)
    a = shard_indices(50, epoch_generator(7, 3), DistInfo(0, 1))
    assert torch.equal(a, shard_indices(50, epoch_generator(7, 3), DistInfo(0, 1)))
    assert not torch.equal(a, shard_indices(50, epoch_generator(7, 4), DistInfo(0, 1)))


def test_warmup_cosine_values():
    f = warmup_cosine(total_steps=110, warmup_steps=10, final=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_bad_fit_config():
    with pytest.raises(CnnlabError, match="epochs"):
        FitConfig(epochs=0)
    with pytest.raises(CnnlabError, match="precision"):
        FitConfig(epochs=1, precision="fp8")


def test_max_steps_cuts_the_last_epoch_and_before_epoch_runs_each_epoch(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen_epochs = []

    def batches(epoch):
        for _ in range(4):
            yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    res = fit(model, opt, batches, 4, FitConfig(epochs=3, max_steps=10), RunDir(tmp_path),
              Reporter(quiet=True), before_epoch=lambda m, e: seen_epochs.append(e))
    assert res.steps == 10 and res.epochs_done == 3 and seen_epochs == [0, 1, 2]
    assert [r["step"] for r in res.history] == [4, 8, 10]


def test_no_monitor_means_no_best_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def batches(epoch):
        yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    res = fit(model, opt, batches, 1, FitConfig(epochs=2, monitor=None), RunDir(tmp_path),
              Reporter(quiet=True), evaluate=lambda m: {"val_accuracy": 0.5})
    assert res.best_epoch is None and not checkpoints.exists(tmp_path, "best")
    assert checkpoints.exists(tmp_path, "last")
    with pytest.raises(CnnlabError, match="early stopping needs"):
        FitConfig(epochs=1, monitor=None, early_stopping=3)


def test_after_epoch_sees_each_record_and_its_exception_stops_after_the_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []

    def batches(epoch):
        for _ in range(3):
            yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    class Stop(Exception):
        pass

    def after_epoch(m, record):
        assert m is model and m.training  # the bare model, back in train mode
        seen.append((record["epoch"], record["val_accuracy"]))
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(model, opt, batches, 3, FitConfig(epochs=5), RunDir(tmp_path), Reporter(quiet=True),
            evaluate=lambda m: {"val_accuracy": 0.5}, after_epoch=after_epoch)
    assert seen == [(1, 0.5), (2, 0.5)]
    # The epoch that raised was logged and checkpointed first: the run resumes after it.
    assert checkpoints.read_meta(tmp_path, "last")["epoch"] == 2
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics() if r["kind"] == "epoch"] == [1, 2]
