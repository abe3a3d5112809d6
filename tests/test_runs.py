"""Run directories: atomic writes, no overwrites, crash-tolerant metrics."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir, atomic_write_text, save_figure


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


class _FigureThatFailsHalfway:
    """A figure whose savefig writes part of the image, then fails (a full disk, a glyph
    matplotlib cannot draw): what a save must survive."""

    def savefig(self, fname, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:
            Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")


def test_save_figure_keeps_the_good_file_when_savefig_fails(tmp_path):
    good = tmp_path / "curves.png"
    good.write_bytes(b"the good one")
    with pytest.raises(OSError, match="disk full"):
        save_figure(_FigureThatFailsHalfway(), good, format="png")
    assert good.read_bytes() == b"the good one"  # not truncated, not half-replaced
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp file left


def test_save_figure_writes_a_real_png_by_the_files_ending(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "line.png", dpi=50)
    assert path == tmp_path / "sub" / "line.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    svg = save_figure(fig, tmp_path / "line.svg")
    assert b"<svg" in svg.read_bytes()[:500]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_damaged_json_file_is_one_line_naming_it(tmp_path):
    run = RunDir(tmp_path)
    for name, content in (("cut.json", b'{"top1": 3'), ("latin.json", b'{"caf\xe9": 1}'),
                          ("empty.json", b"")):
        run.file(name).write_bytes(content)
        with pytest.raises(CnnlabError) as exc:
            run.read_json(name)
        assert str(exc.value).startswith(f"{run.file(name)} is damaged: not valid JSON (")
        assert "\n" not in str(exc.value)


def test_a_record_read_back_is_checked_key_by_key(tmp_path):
    run = RunDir(tmp_path)
    keys = {"steps": int, "seconds": (int, float), "tta": str}
    run.write_json("plan.json", {"steps": 3, "seconds": 1, "tta": "none", "extra": None})
    assert run.read_record("plan.json", keys)["steps"] == 3
    for record, problem in (([1, 2], "it holds no mapping"),
                            ({"seconds": 1.0, "tta": "none"}, "no valid 'steps'"),
                            ({"steps": True, "seconds": 1.0, "tta": "none"},
                             "no valid 'steps' (True)"),  # JSON true is not a count
                            ({"steps": 3, "seconds": "1", "tta": "none"},
                             "no valid 'seconds' ('1')")):
        run.write_json("plan.json", record)
        with pytest.raises(CnnlabError) as exc:
            run.read_record("plan.json", keys)
        assert str(exc.value).startswith(f"{run.file('plan.json')} is damaged: {problem}; ")


@pytest.mark.parametrize("write", ["run.write_json('results.json', {'x': 'a' * 5000})",
                                   "run.append_metrics({'x': 'a' * 5000})"])
def test_a_write_the_machine_refuses_names_the_file_not_a_temporary_one(write, tmp_path):
    """A write's OSError (EFBIG here, under a 2 KiB file-size limit; ENOSPC on a full disk)
    carries no file name of its own: the writer adds the file it was writing."""
    code = ("import resource, sys\n"
            "from cnnlab.runs import RunDir\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
            "run = RunDir(sys.argv[1])\n"
            "try:\n"
            f"    {write}\n"
            "except OSError as exc:\n"
            "    print(exc.errno, exc.filename)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    name = "results.json" if "results" in write else "metrics.jsonl"
    assert proc.stdout == f"{errno.EFBIG} {tmp_path / name}\n", proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if name == "results.json"
                                                         else ["metrics.jsonl"])
