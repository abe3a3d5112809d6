"""`cnnlab evaluate` under real torchrun (2 CPU processes, gloo).

The ranks run `cnnlab` through a small launcher that can skew what one rank sees (its own folder
listing), stand in for the network (torch.hub's downloader), plant a bug on rank 0, and log how
each rank came back. So the tests show that rank 0's listing and rank 0's download are the ones
every rank uses, and that an error on rank 0 stops every rank by itself, reported once.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.cli import main

# 25 images over 2 ranks: 13 + 12, i.e. 4 + 3 batches of at most 4 (uneven shards, several
# batches per rank, a short last batch on each).
LIMIT = 25
BATCH = 4

LAUNCHER = '''
import dataclasses, os, shutil, sys, time

rank = int(os.environ["RANK"])
if os.environ.get("SKEW_LISTING") and rank == 1:
    # Rank 1's own listing misses the first image (as if it were added between the listings).
    import cnnlab.data.folders as folders

    real = folders.discover

    def discover(*args, **kwargs):
        found = real(*args, **kwargs)
        first = min(found.items, key=lambda it: str(it.path))
        return dataclasses.replace(found, items=[it for it in found.items if it != first])

    folders.discover = discover
if os.environ.get("BUG_ON_RANK_0") and rank == 0:
    # A bug (not a user error) while rank 0 lists the folder.
    import cnnlab.data.folders as folders

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in discover")

    folders.discover = broken
if os.environ.get("FAKE_DOWNLOAD"):
    # The network: record who downloads; copy a local file (atomically, as torch does) or fail.
    import torch.hub

    def download(url, dst, *args, **kwargs):
        with open(os.environ["DOWNLOAD_LOG"], "a") as log:
            log.write(f"{rank}\\n")
        time.sleep(3)  # a download takes a while: without coordination both ranks are in here
        if os.environ["FAKE_DOWNLOAD"] == "fail":
            raise OSError("network unreachable")
        shutil.copy(os.environ["FAKE_DOWNLOAD"], dst + ".partial")
        os.replace(dst + ".partial", dst)

    torch.hub.download_url_to_file = download
if os.environ.get("LIBRARY_CALL"):
    # `evaluate.run` called directly (no CLI, no open_run): it must join the group itself.
    import json

    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks.evaluate import EvaluateConfig, run

    config = EvaluateConfig(**json.loads(os.environ["LIBRARY_CALL"]))
    results = run(config, RunDir(sys.argv[1]), Reporter(quiet=True))
    code = 0 if (results is not None) == (rank == 0) else 1
else:
    from cnnlab.cli import main

    code = "exception"
    try:
        code = main(sys.argv[1:])
    finally:
        if os.environ.get("EXIT_LOG"):
            # Which ranks got back from cnnlab by themselves, and how. Rank 0 then lingers,
            # because torchrun terminates the other ranks as soon as one fails: a rank stuck
            # in a collective would never write its line.
            with open(os.environ["EXIT_LOG"], "a") as log:
                log.write(f"{rank} {code}\\n")
            if rank == 0:
                time.sleep(5)
sys.exit(code)
'''


def torchrun(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.CompletedProcess,
                                                                     float]:
    launcher = tmp_path / "launch_cnnlab.py"
    launcher.write_text(LAUNCHER)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(launcher), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    return proc, time.monotonic() - start


def predictions(run: Path) -> list[dict[str, str]]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.dist
def test_two_ranks_equal_one_process_even_if_rank_1_lists_differently(
    tmp_path, shared_data, capsys
):
    samples = shared_data("imagenet-samples")
    args = [str(samples), "-m", "efficientnet_lite0", "--limit", str(LIMIT), "--batch-size",
            str(BATCH), "--workers", "0", "--no-report", "-q"]
    proc, _ = torchrun(tmp_path, ["evaluate", *args, "--out", str(tmp_path / "two")],
                       SKEW_LISTING="1")
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
    # noise of different batch compositions. A rank scoring its own listing's shard would put
    # one image's predictions under another's name.
    p2, p1 = predictions(tmp_path / "two"), predictions(tmp_path / "one")
    assert len(p2) == len(p1) == LIMIT * 5
    for r2, r1 in zip(p2, p1, strict=True):
        assert (r2["file"], r2["rank"], r2["true_label"]) == (r1["file"], r1["rank"],
                                                              r1["true_label"])
        assert abs(float(r2["probability"]) - float(r1["probability"])) < 1e-4
        if r2["rank"] == "1":
            assert r2["class_index"] == r1["class_index"]
    # Only rank 0 wrote: one table on stdout.
    assert proc.stdout.count("efficientnet_lite0") == 1


@pytest.mark.slow
@pytest.mark.dist
def test_one_rank_downloads_the_weights_the_other_waits(tmp_path, shared_data):
    import torch
    import torchvision

    weights = tmp_path / "resnet18-random.pth"  # stands in for the official file
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    log = tmp_path / "downloads.log"
    config = {"path": str(shared_data("imagenet-samples")), "models": ["resnet18"], "limit": 4,
              "workers": 0, "report": False}
    (tmp_path / "run").mkdir()
    proc, _ = torchrun(  # through the library: evaluate.run joins the process group itself
        tmp_path, [str(tmp_path / "run")], LIBRARY_CALL=json.dumps(config),
        FAKE_DOWNLOAD=str(weights), DOWNLOAD_LOG=str(log), TORCH_HOME=str(tmp_path / "torch"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log.read_text() == "0\n"  # rank 0 only
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["models"][0][
        "n_images"] == 4


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """cnnlab's own error lines in the combined output (torchrun adds a failure summary)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("cnnlab evaluate: error:")]


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("case", ["refused --out", "unknown label", "download fails"])
def test_a_user_error_stops_every_rank_at_once_with_one_line(case, tmp_path, shared_data):
    samples = shared_data("imagenet-samples")
    out = tmp_path / "run"
    env = {"EXIT_LOG": str(tmp_path / "exits.log")}
    model = "efficientnet_lite0"
    if case == "refused --out":
        out.mkdir()
        (out / "results.json").write_text("{}")  # someone's earlier run
        expected = "already holds files"
    elif case == "unknown label":
        photos = tmp_path / "photos" / "definitely_not_a_class"
        photos.mkdir(parents=True)
        for p in sorted(samples.iterdir())[:2]:
            (photos / p.name).write_bytes(p.read_bytes())
        samples = photos.parent
        expected = "definitely_not_a_class"
    else:
        model = "resnet18"
        env |= {"FAKE_DOWNLOAD": "fail", "DOWNLOAD_LOG": str(tmp_path / "downloads.log"),
               "TORCH_HOME": str(tmp_path / "torch")}
        expected = "no pretrained weights for resnet18: download failed"
    proc, seconds = torchrun(
        tmp_path,
        ["evaluate", str(samples), "-m", model, "--limit", "2", "--workers", "0", "-q",
         "--out", str(out)],
        **env,
    )
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-3000:]
    # Both ranks returned by themselves with cnnlab's status 2; neither waited in a collective.
    assert sorted((tmp_path / "exits.log").read_text().splitlines()) == ["0 2", "1 2"]
    assert seconds < 120
    if case == "download fails":
        assert (tmp_path / "downloads.log").read_text() == "0\n"
    if case == "refused --out":
        assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # untouched


@pytest.mark.slow
@pytest.mark.dist
def test_a_bug_on_rank_0_stops_the_other_rank_too(tmp_path, shared_data):
    proc, _ = torchrun(
        tmp_path,
        ["evaluate", str(shared_data("imagenet-samples")), "--limit", "2", "--workers", "0",
         "-q", "--out", str(tmp_path / "run")],
        BUG_ON_RANK_0="1", EXIT_LOG=str(tmp_path / "exits.log"),
    )
    assert proc.returncode != 0
    assert "RuntimeError: a bug in discover" in proc.stderr  # rank 0's traceback
    assert error_lines(proc) == []  # not dressed up as a user error
    # Rank 1 was not left waiting for rank 0's listing: it returned by itself (status 2).
    assert sorted((tmp_path / "exits.log").read_text().splitlines()) == ["0 exception", "1 2"]
