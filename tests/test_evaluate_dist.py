"""`cnnlab evaluate` under torchrun: 2 CPU processes (gloo) give the results of 1 process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main

LIMIT = 24  # images: enough for uneven shards (12 + 12 split over 2 batches of 16 each)


def predictions(run: Path) -> list[dict[str, str]]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.dist
def test_torchrun_two_ranks_equal_one_process(tmp_path, shared_data, capsys):
    samples = shared_data("imagenet-samples")
    args = [str(samples), "-m", "efficientnet_lite0", "--limit", str(LIMIT), "--workers", "0",
            "--no-report", "-q"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "cnnlab", "evaluate", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["evaluate", *args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for a, b in zip(two["models"], one["models"], strict=True):
        assert a["n_images"] == b["n_images"] == LIMIT
        assert a["top1_error"] == b["top1_error"]
        assert a["top5_error"] == b["top5_error"]
    # Per image, in the same (global) order: same classes; probabilities equal up to the float
    # noise of different batch compositions.
    p2, p1 = predictions(tmp_path / "two"), predictions(tmp_path / "one")
    assert len(p2) == len(p1) == LIMIT * 5
    for r2, r1 in zip(p2, p1, strict=True):
        assert (r2["file"], r2["rank"]) == (r1["file"], r1["rank"])
        assert abs(float(r2["probability"]) - float(r1["probability"])) < 1e-4
        if r2["rank"] == "1":
            assert r2["class_index"] == r1["class_index"]
    # Only rank 0 wrote: one table on stdout.
    assert proc.stdout.count("efficientnet_lite0") == 1
