"""Shared by the `cnnlab evaluate` benchmarks: run a command, measure its wall time and memory.

Peak memory is measured three ways, all reported:
- `tree_rss`: the peak of the summed RSS of the process and all its children, sampled every
  50 ms with psutil. DataLoader workers are forked, so pages they share with the parent are
  counted twice: this over-states cnnlab's memory, never under-states it.
- `tree_pss`: the same with PSS (proportional set size: a page shared by k processes counts
  1/k in each), which is the machine's real memory use by the tree.
- `maxrss`: the largest single-process peak RSS among the finished children
  (getrusage(RUSAGE_CHILDREN).ru_maxrss, exact but per process). Each measurement runs in a
  fresh Python process (this script re-executing itself), so the value is that command's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = Path(os.environ.get("CNNLAB_DATA", DATA_ROOT)) / "imagenet-samples"
PYTHON = sys.executable


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(summed RSS, summed PSS) of a process and its descendants, bytes."""
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            rss += info.rss
            pss += info.pss
    return rss, pss


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `cmd` in a fresh process that reports its own ru_maxrss; sample the tree's RSS."""
    wrapper = [PYTHON, __file__, "--child", json.dumps(cmd)]
    start = time.perf_counter()
    proc = subprocess.Popen(wrapper, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    ps = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            rss, pss = tree_memory(ps)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": wall, "tree_rss_mb": peak_rss / 2**20, "tree_pss_mb": peak_pss / 2**20,
            "maxrss_mb": report["maxrss_kb"] / 1024, "cpu_s": report["cpu_s"]}


def _child(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Linux: kilobytes; CPU: the command and its waited-for children (decoding workers)
    print(json.dumps({"maxrss_kb": usage.ru_maxrss,
                      "cpu_s": usage.ru_utime + usage.ru_stime}))


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(json.loads(sys.argv[2]))
