"""Run directories: atomic writes, no overwrites, crash-tolerant metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir, atomic_write_text


def test_default_run_dirs_never_collide(tmp_path):
    a = RunDir.create("train", root=tmp_path)
    b = RunDir.create("train", root=tmp_path)  # same second: gets a suffix
    assert a.path != b.path
    assert a.path.parent == b.path.parent == tmp_path / "train"


def test_explicit_out_must_be_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RunDir.create("x", out=empty).path == empty
    (empty / "results.json").write_text("{}")
    with pytest.raises(CnnlabError, match="already holds files"):
        RunDir.create("x", out=empty)
    (tmp_path / "file").write_text("")
    with pytest.raises(CnnlabError):
        RunDir.create("x", out=tmp_path / "file")


def test_config_results_environment(tmp_path):
    @dataclass(frozen=True)
    class Cfg:
        lr: float = 0.1
        path: Path = Path("data")
        sizes: tuple[int, ...] = (1, 2)

    run = RunDir.create("t", out=tmp_path / "r")
    run.save_config(Cfg())
    run.save_results({"top1_error": 12.5})
    run.save_environment(seed=3, device="cpu")
    assert run.read_json("config.json") == {"lr": 0.1, "path": "data", "sizes": [1, 2]}
    assert run.read_json("results.json") == {"top1_error": 12.5}
    env = run.read_json("environment.json")
    assert env["seed"] == 3 and env["device"] == "cpu"
    assert {"python", "torch", "torchvision", "timm", "git_sha", "torch_threads"} <= set(env)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"  # the previous version survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_metrics_survive_a_torn_last_line(tmp_path):
    run = RunDir.create("t", out=tmp_path / "r")
    run.append_metrics({"step": 1, "loss": 2.0})
    run.append_metrics({"step": 2, "loss": 1.5})
    with open(run.file("metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-write
    assert run.read_metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    run = RunDir.create("t", out=tmp_path / "r")
    with pytest.raises(ValueError):
        run.save_results({"loss": float("nan")})
    assert not run.file("results.json").exists()


def test_open_missing_run(tmp_path):
    with pytest.raises(CnnlabError, match="not found"):
        RunDir.open(tmp_path / "nope")


def test_written_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result must be readable like any file."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
