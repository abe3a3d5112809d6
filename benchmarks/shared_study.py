"""`cnnlab experiment --storage postgresql://...`: one experiment run by one process against two
processes sharing its study in a real PostgreSQL server on this machine (issue 29).

    python benchmarks/shared_study.py                        # pooling, 3 seeds
    python benchmarks/shared_study.py --experiment depth --seeds 2 --extra --quick

A throw-away PostgreSQL cluster (tests/postgres.py: Debian's server, a Unix socket, stopped at
the end) holds a fresh database per configuration. Each configuration is the same `cnnlab
experiment` command, started in N processes at once (N = 1, 2) with cores / N torch threads
each, separate --out and CNNLAB_CACHE folders (a machine each), timed from the outside until
the last one has written its report. The CIFAR-10 decode is done once beforehand into every
process's cache, so that it is not in the timings.

The database's cost: every process runs under a wrapper (`--child`) that times each call into
Optuna's `RDBStorage` (outermost calls only; a call made inside another is not counted twice):
the training thread's calls, which the trials wait for, and the heartbeat thread's, which they
do not (it beats every CNNLAB_HEARTBEAT seconds, 60 by default). "storage s / trial" is the
training thread's storage seconds over every process divided by the trials trained.

The machine may be shared: the ratio of the two rows, measured in one run, is the figure to
quote, with the load averages printed beside it.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZIP = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"


# --------------------------------------------------------------------------- the child


def child(stats_path: str, argv: list[str]) -> int:
    """Run `cnnlab argv` with every RDBStorage call timed; the totals into stats_path."""
    import optuna

    from cnnlab.cli import main

    main_thread = threading.get_ident()
    depth = threading.local()
    totals = {"main": {"calls": 0, "seconds": 0.0}, "other": {"calls": 0, "seconds": 0.0}}
    lock = threading.Lock()

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            level = getattr(depth, "n", 0)
            depth.n = level + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth.n = level
                if level == 0:  # the outermost storage call only
                    key = "main" if threading.get_ident() == main_thread else "other"
                    with lock:
                        totals[key]["calls"] += 1
                        totals[key]["seconds"] += time.perf_counter() - start
        return wrapper

    cls = optuna.storages.RDBStorage
    for name in dir(cls):
        if not name.startswith("_") and callable(getattr(cls, name)):
            setattr(cls, name, timed(getattr(cls, name)))
    atexit.register(lambda: Path(stats_path).write_text(json.dumps(totals)))
    return main(argv)


# --------------------------------------------------------------------------- the parent


def run_config(url: str, n: int, args, tmp: Path, cores: int) -> dict:
    threads = max(1, cores // n)
    cmd = ["experiment", args.experiment, "--seeds", str(args.seeds), "--data", str(args.data),
           "--threads", str(threads), "--storage", url, "--study", f"bench{n}", "--no-report",
           "-q", *args.extra]
    procs = []
    start = time.monotonic()
    for k in range(n):
        env = {**os.environ, "CNNLAB_CACHE": str(tmp / f"cache-{k}"),
               "OMP_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--child", str(tmp / f"stats{n}-{k}.json"), "--", *cmd,
             "--out", str(tmp / f"run{n}-{k}")], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a process failed ({p.returncode}):\n{err[-3000:]}")
    wall = time.monotonic() - start
    stats = [json.loads((tmp / f"stats{n}-{k}.json").read_text()) for k in range(n)]
    results = [json.loads((tmp / f"run{n}-{k}" / "results.json").read_text()) for k in range(n)]
    exp = results[0]["experiments"][args.experiment]
    same = all(r["experiments"][args.experiment]["rows"] == exp["rows"] for r in results)
    trials = exp["completed"]
    main_s = sum(s["main"]["seconds"] for s in stats)
    return {"processes": n, "threads": threads, "wall_s": round(wall, 1), "trials": trials,
            "trial_s": exp["trial_seconds"], "storage_calls": sum(s["main"]["calls"]
                                                                  for s in stats),
            "storage_s": round(main_s, 2), "storage_s_per_trial": round(main_s / trials, 3),
            "heartbeat_calls": sum(s["other"]["calls"] for s in stats),
            "same_rows_in_every_process": same, "verdict": exp["verdict"]["status"],
            "test": [r["test"] for r in exp["rows"]]}


def prepare_caches(args, tmp: Path, n: int) -> None:
    """Decode CIFAR-10 once into every process's cache (a one-trial throw-away run each)."""
    first = tmp / "cache-0"
    subprocess.run([sys.executable, "-m", "cnnlab", "experiment", args.experiment, "--seeds",
                    "1", "--epochs", "0.01", "--data", str(args.data), "--no-report", "-q",
                    *args.extra, "--out", str(tmp / "warm")], check=True,
                   env={**os.environ, "CNNLAB_CACHE": str(first)}, capture_output=True)
    for k in range(1, n):
        subprocess.run(["cp", "-r", str(first), str(tmp / f"cache-{k}")], check=True)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="pooling")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--data", default=str(ZIP))
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more `cnnlab experiment` options, e.g. --quick --limit-per-class 10")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from postgres import PostgresServer

    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average before: {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d, PostgresServer() as server:
        tmp = Path(d)
        prepare_caches(args, tmp, max(args.processes))
        for n in args.processes:
            url = server.create_database(f"bench{n}")
            rows.append(run_config(url, n, args, tmp, cores))
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {os.getloadavg()}")
    base = rows[0]["wall_s"]
    for r in rows:
        print(f"{r['processes']} process(es) x {r['threads']} thread(s): {r['wall_s']:.1f} s "
              f"({base / r['wall_s']:.2f}x), {r['trials']} trials, storage "
              f"{1000 * r['storage_s_per_trial']:.0f} ms/trial over {r['storage_calls']} calls "
              f"({100 * r['storage_s'] / r['trial_s']:.2f}% of the trials' seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
