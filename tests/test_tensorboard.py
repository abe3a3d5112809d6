"""TensorBoard event files beside metrics.jsonl (`tracking.py`), read back with TensorBoard's own
readers: the raw events of every file (`EventFileLoader`, no de-duplication) must be exactly the
records of metrics.jsonl, the oracle; `EventMultiplexer` sees the runs `tensorboard --logdir`
would; the hparams are the run's config.json. A resumed run shows each step once, and a Python
without tensorboard trains as before and writes no event file."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.runs import RunDir
from conftest import missing

SMALL = ["--limit-per-class", "20", "--epochs", "2", "--recipe", "lab", "-m", "simple-cnn",
         "--threads", "1", "--no-report", "-q"]
TEXT = ("All the world's a stage, and all the men and women merely players; they have their "
        "exits and their entrances. ") * 4
# As tests/test_charrnn_resume.py: 12 steps an epoch, 3 epochs, a checkpoint at every epoch end;
# training-loss lines every 5 steps, validation at 12, 24, 36.
CHAR = ["--cell", "lstm", "--hidden", "16", "--embedding", "8", "--batch-size", "4",
        "--seq-len", "8", "--epochs", "3", "--log-every", "5", "--threads", "1",
        "--save-interval", "0", "-q"]


@pytest.fixture(autouse=True)
def tensorboard():
    try:
        import tensorboard  # noqa: F401
    except ImportError:  # the `test` extra installs it: CI never skips
        missing("tensorboard is not installed (pip install 'cnnlab[tensorboard]')")


@pytest.fixture
def text_file(tmp_path) -> Path:
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    return f


def f32(x: float) -> float:
    """`x` as TensorBoard stores a scalar (float32)."""
    import numpy as np

    return float(np.float32(x))


def event_files(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if "tfevents" in p.name)


def raw_events(run: Path) -> list:
    """The events as stored (EventFileLoader would migrate scalars to tensors on reading)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    return [Event.FromString(b) for f in event_files(run) for b in RawEventFileLoader(str(f))
            .Load()]


def raw_scalars(run: Path) -> list[tuple[str, int, float]]:
    """Every scalar of every event file, in file order: duplicates and all."""
    return [(v.tag, e.step, v.simple_value) for e in raw_events(run) for v in e.summary.value
            if v.WhichOneof("value") == "simple_value"]


def metrics_scalars(run: Path) -> list[tuple[str, int, float]]:
    """The oracle: each number of each metrics.jsonl record but its step, tagged kind/field."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out += [(f"{r['kind']}/{k}", r["step"], f32(v)) for k, v in r.items()
                if k not in ("kind", "step") and isinstance(v, int | float)]
    return out


def hparams(run: Path) -> tuple[dict, list]:
    """(hparams of the session start, the session ends' statuses) as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    ends = [api_pb2.Status.Name(metadata.parse_session_end_info_plugin_data(c).status)
            for t, c in content.items() if t == metadata.SESSION_END_INFO_TAG]
    return values, ends


def test_train_events_are_the_metrics_and_the_config(shared_data, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    cifar = shared_data("cifar10", "cifar10-jpg.zip")
    out = tmp_path / "run"
    assert main(["train", str(cifar), *SMALL, "--seeds", "2", "--out", str(out)]) == 0
    # `tensorboard --logdir out`: one run per model and seed, none for the parent folder
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    assert sorted(mux.Runs()) == ["simple-cnn-seed0", "simple-cnn-seed1"]
    for seed in (0, 1):
        run = out / f"simple-cnn-seed{seed}"
        got = [s for s in raw_scalars(run) if not s[0].startswith("final/")]
        want = metrics_scalars(run)
        assert got == want  # every number of every record, at its step, once, in order
        tags = {t for t, _, _ in got}
        assert {"step/train_loss", "step/lr", "epoch/train_loss", "epoch/train_accuracy",
                "epoch/test_accuracy", "epoch/test_loss", "epoch/lr"} <= tags
        assert [s for t, s, _ in got if t == "epoch/test_accuracy"] == [6, 12]  # 200 // 32
        # what the dashboard plots: TensorBoard's accumulator agrees
        curve = mux.Scalars(run.name, "epoch/train_loss")
        assert [(e.step, e.value) for e in curve] == [(s, v) for t, s, v in want
                                                      if t == "epoch/train_loss"]
        results = json.loads((run / "results.json").read_text())
        finals = {t: (s, v) for t, s, v in raw_scalars(run) if t.startswith("final/")}
        assert finals["final/test_accuracy"] == (12, f32(results["test_accuracy"]))
        values, ends = hparams(run)
        config = json.loads((run / "config.json").read_text())
        assert values["model"] == "simple-cnn" and values["seed"] == seed == config["seed"]
        assert values["recipe.lr"] == config["recipe"]["lr"] == 1e-3
        assert values["train.epochs"] == 2 and values["train.models"] == '["simple-cnn"]'
        assert values["train.test"] is True and values["recipe.schedule.kind"] == "constant"
        assert ends == ["STATUS_SUCCESS"]
    assert not event_files(out)


def test_charrnn_events_are_the_metrics(text_file, tmp_path):
    out = tmp_path / "run"
    assert main(["charrnn", "train", "--text", str(text_file), *CHAR, "--out", str(out)]) == 0
    got = [s for s in raw_scalars(out) if not s[0].startswith("final/")]
    assert got == metrics_scalars(out)
    assert [s for t, s, _ in got if t == "step/train_loss"] == [5, 10, 15, 20, 25, 30, 35, 36]
    assert [s for t, s, _ in got if t == "eval/val_bpc"] == [12, 24, 36]
    values, ends = hparams(out)
    assert values["cell"] == "lstm" and values["hidden"] == 16 and values["epochs"] == 3
    assert ends == ["STATUS_SUCCESS"]
    results = json.loads((out / "results.json").read_text())
    final = [(s, v) for t, s, v in raw_scalars(out) if t == "final/val_loss"]
    assert final == [(36, f32(results["val_loss"]))]


def test_a_resumed_run_shows_each_step_once(text_file, tmp_path, capsys):
    """Killed (SIGKILL) between writing the step-24 checkpoint's files and its JSON: the run
    goes back to step 12 while its metrics and events already reached 24. After --resume the
    events hold each step once, with the resumed run's values (metrics.jsonl's)."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", "charrnn", "train", "--text", str(text_file), *CHAR,
         "--out", str(run)], env={**os.environ, "CNNLAB_CRASH_AT": "last:files-written#2"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    before = raw_scalars(run)
    assert [s for t, s, _ in before if t == "step/train_loss"] == [5, 10, 15, 20]
    assert main(["charrnn", "train", "--resume", str(run)]) == 0
    assert "at step 12 " in capsys.readouterr().err
    got = [s for s in raw_scalars(run) if not s[0].startswith("final/")]
    assert got == metrics_scalars(run)
    assert [s for t, s, _ in got if t == "step/train_loss"] == [5, 10, 15, 20, 25, 30, 35, 36]
    assert len(event_files(run)) == 1
    assert hparams(run)[1] == ["STATUS_SUCCESS"]


def test_truncating_metrics_rewrites_the_events(tmp_path):
    """RunDir alone: what --resume does to metrics.jsonl, the event file follows."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.save_config({"lr": 0.1, "model": "m", "sizes": [1, 2], "none": None,
                     "train": {"model_options": (("depth", 4), ("pool", "max"))}})
    for step in (1, 2, 3):
        run.append_metrics({"kind": "epoch", "step": step, "train_loss": 1 / step})
    run.truncate_metrics(lambda r: r["step"] <= 1)
    assert raw_scalars(run.path) == [("epoch/train_loss", 1, 1.0)]
    again = RunDir(run.path)  # a new process's first write
    again.append_metrics({"kind": "epoch", "step": 2, "train_loss": 0.25})
    run_scalars = raw_scalars(run.path)
    assert run_scalars == [("epoch/train_loss", 1, 1.0), ("epoch/train_loss", 2, 0.25)]
    assert hparams(run.path)[0] == {"lr": 0.1, "model": "m", "sizes": "[1, 2]",
                                    "train.model_options.depth": 4,
                                    "train.model_options.pool": "max"}
    # a record without a step (evaluate's summaries) is no curve; strings are no scalar
    again.append_metrics({"model": "x", "top1_error": 0.5})
    assert raw_scalars(run.path) == run_scalars
    assert math.isclose(json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])
                        ["top1_error"], 0.5)


def test_without_tensorboard_a_run_trains_and_writes_no_events(text_file, tmp_path):
    out = tmp_path / "run"
    # sys.modules[name] = None makes `import name` raise ImportError: as if not installed
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from cnnlab.cli import main\n"
            f"rc = main(['charrnn', 'train', '--text', {str(text_file)!r}, *{CHAR!r}, "
            f"'--out', {str(out)!r}])\n"
            "print(sorted(m for m in sys.modules if m.startswith('tensorboard')))\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "['tensorboard']"  # only the blocked name
    assert (out / "results.json").is_file() and len(metrics_scalars(out)) > 0
    assert not event_files(out)
