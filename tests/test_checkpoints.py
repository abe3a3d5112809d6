"""cnnlab.checkpoints: one atomic unit, proven with real SIGKILLs at the worst moments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import checkpoints
from cnnlab.errors import CnnlabError

# Saves checkpoint "last" three times: weights w = i, optimiser-like state t = i, step i.
SAVES = """
import sys, torch
from cnnlab import checkpoints
from cnnlab.errors import CnnlabError
for i in (1, 2, 3):
    checkpoints.save(sys.argv[1], "last", {"w": torch.full((3,), float(i))}, {"step": i},
                     {"t": torch.tensor(i)})
"""


def saves_until_killed(run: Path, crash_at: str) -> None:
    env = {**os.environ, "CNNLAB_CRASH_AT": crash_at}
    proc = subprocess.run([sys.executable, "-c", SAVES, str(run)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_crash_after_the_files_leaves_the_previous_pair(tmp_path):
    saves_until_killed(tmp_path, "last:files-written#2")
    # The second save's files are on disk, but the JSON still names the first pair...
    assert files(tmp_path) == [
        "last-000001.safetensors", "last-000001.state.pt",
        "last-000002.safetensors", "last-000002.state.pt",
    ]
    meta = checkpoints.read_meta(tmp_path, "last")
    assert (meta["serial"], meta["step"]) == (1, 1)
    # ...and loading gives that pair: old weights with the old state, never new with old.
    ck = checkpoints.load(tmp_path, "last")
    assert ck.weights["w"].tolist() == [1.0, 1.0, 1.0] and int(ck.state["t"]) == 1
    # The next save uses a fresh serial and removes the litter of the crashed one.
    checkpoints.save(tmp_path, "last", {"w": torch.full((3,), 9.0)}, {"step": 9},
                     {"t": torch.tensor(9)})
    assert files(tmp_path) == ["last-000003.safetensors", "last-000003.state.pt"]
    ck = checkpoints.load(tmp_path, "last")
    assert ck.meta["step"] == 9 and ck.weights["w"][0] == 9 and int(ck.state["t"]) == 9


def test_crash_after_the_json_names_the_new_pair(tmp_path):
    saves_until_killed(tmp_path, "last:json-written#2")
    ck = checkpoints.load(tmp_path, "last")
    assert ck.meta["step"] == 2 and ck.weights["w"][0] == 2 and int(ck.state["t"]) == 2
    assert "last-000001.safetensors" in files(tmp_path)  # not yet removed when killed
    checkpoints.save(tmp_path, "last", {"w": torch.zeros(3)}, {"step": 3})
    assert files(tmp_path) == ["last-000003.safetensors"]


def test_crash_before_the_first_json_leaves_no_checkpoint(tmp_path):
    saves_until_killed(tmp_path, "last:files-written")  # no "#n": the first visit
    assert not checkpoints.exists(tmp_path, "last")
    with pytest.raises(CnnlabError, match="no 'last' checkpoint"):
        checkpoints.load(tmp_path, "last")


def test_save_removes_temporary_files_of_a_killed_write_and_nothing_else(tmp_path):
    checkpoints.save(tmp_path, "best", {"w": torch.ones(1)}, {"step": 1})
    folder = tmp_path / "checkpoints"
    (folder / ".last-000004.safetensors.k2j3h.tmp").write_bytes(b"half a file")
    (folder / ".last-000004.state.pt.x1.tmp").write_bytes(b"half a file")
    (folder / "notes.txt").write_text("mine")
    checkpoints.save(tmp_path, "last", {"w": torch.ones(1)}, {"step": 1})
    assert files(tmp_path) == ["best-000001.safetensors", "last-000001.safetensors", "notes.txt"]
    assert checkpoints.load(tmp_path, "best").meta["step"] == 1


def test_meta_cannot_overwrite_the_file_names(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        checkpoints.save(tmp_path, "last", {"w": torch.ones(1)}, {"weights": "elsewhere"})
    assert not checkpoints.exists(tmp_path, "last")
