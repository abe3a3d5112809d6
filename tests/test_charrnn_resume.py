"""`charrnn train --resume` after a real `kill -9` at the worst moments.

Each crash run is `python -m cnnlab charrnn train` in a subprocess with CNNLAB_CRASH_AT set, so
the process dies by SIGKILL exactly there; `--resume` must then finish with the weights and the
metrics of an uninterrupted run: no line twice, no torn line, no step missing.
"""

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
from cnnlab.tasks.charrnn import load_checkpoint

TEXT = ("All the world's a stage, and all the men and women merely players; they have their "
        "exits and their entrances. ") * 4
# 396 training characters -> (396 - 1 - 7) // 4 = 97 per stream, 97 // 8 = 12 steps per epoch;
# 3 epochs = 36 steps; a checkpoint at every epoch end (steps 12, 24, 36). Metrics lines: training
# loss every 5 steps and at the last, validation at every epoch end:
# t5 t10 v12 | t15 t20 v24 | t25 t30 t35 t36 v36. A checkpoint at 12 holds the losses of steps 11
# and 12, not yet logged: the resumed t15 must average 11..15 as the uninterrupted one does.
ARGS = ["--cell", "lstm", "--hidden", "16", "--embedding", "8", "--batch-size", "4",
        "--seq-len", "8", "--epochs", "3", "--log-every", "5", "--dropout", "0.1",
        "--threads", "1", "--save-interval", "0", "-q"]
STEPS = 36
TRAIN_LINES = [5, 10, 15, 20, 25, 30, 35, 36]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("data") / "t.txt"
    f.write_text(TEXT)
    return f


@pytest.fixture(scope="module")
def straight(text_file, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["charrnn", "train", "--text", str(text_file), *ARGS, "--out", str(out)]) == 0
    return out


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field; fails on any unparsable line."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def kill_during_training(text_file: Path, out: Path, crash_at: str) -> None:
    env = {**os.environ, "CNNLAB_CRASH_AT": crash_at}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", "charrnn", "train", "--text", str(text_file), *ARGS,
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("crash_at", "resumes_from", "logged_until"),
    [
        # killed between writing the step-24 files and the JSON naming them: back to step 12,
        # with the lines t15 t20 v24 written after that checkpoint already on disk
        ("last:files-written#2", 12, 24),
        # killed after the step-24 JSON, before the step-12 files were removed
        ("last:json-written#2", 24, 24),
        # killed half-way through metrics line 5 (t20): t15 and a torn line after the checkpoint
        ("metrics:mid-line#5", 12, 15),
        # killed in the very first save: no checkpoint at all, training starts again
        ("last:files-written#1", 0, 12),
    ],
)
def test_resume_after_kill_equals_the_uninterrupted_run(
    crash_at, resumes_from, logged_until, text_file, straight, tmp_path, capsys
):
    run = tmp_path / "run"
    kill_during_training(text_file, run, crash_at)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    if crash_at.startswith("metrics"):
        assert len(lines) == 5 and not lines[-1].endswith("\n")  # really torn
        lines = lines[:-1]
    assert max(json.loads(line)["step"] for line in lines) == logged_until

    assert main(["charrnn", "train", "--resume", str(run)]) == 0
    assert f"at step {resumes_from} " in capsys.readouterr().err

    got, want = records(run), records(straight)
    assert got == want  # same numbers, each line once, none torn, none missing
    assert [r["step"] for r in got if "train_loss" in r] == TRAIN_LINES
    model, _, info = load_checkpoint(run)
    reference, _, _ = load_checkpoint(straight)
    assert info["step"] == STEPS
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name  # bit for bit
    # The crashed save's files and the superseded pair are gone: one checkpoint remains.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"last-{info['serial']:06d}.safetensors", f"last-{info['serial']:06d}.state.pt"
    ]
    got_r = json.loads((run / "results.json").read_text())
    want_r = json.loads((straight / "results.json").read_text())
    for key in ("steps", "train_loss", "val_loss", "best_val_loss"):
        assert got_r[key] == want_r[key], key


def test_a_torn_last_metrics_line_is_dropped_on_resume(text_file, tmp_path, capsys):
    """Without a kill: a run stopped by --time-limit after step 1, half a line appended."""
    run = tmp_path / "run"
    args = [a for a in ARGS if a != "-q"]
    assert main(["charrnn", "train", "--text", str(text_file), *args, "--time-limit", "1e-9",
                 "--out", str(run), "-q"]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_lo')
    assert main(["charrnn", "train", "--resume", str(run), "--epochs", "1", "-q"]) == 0
    capsys.readouterr()
    got = records(run)  # would raise on a torn line
    assert [r["step"] for r in got if "train_loss" in r] == [5, 10, 12]
