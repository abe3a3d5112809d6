"""Few-shot protocol for `cnnlab finetune`: k photos per class, several random draws per k.

    python benchmarks/finetune_fewshot.py [--data-root DIR] [--work DIR] [--k 3 5 8]
        [--draws 3] [--datasets cifar10 hymenoptera]
        [--methods old new new-lite0 finetune partial-lite0]
        [--finetune-draws 1]

The lab's data (10 classes of unfamiliar things, ~8 training photos each, 24 test photos) is not
here, so its shape is rebuilt from the data that is:
- cifar10: all 10 classes; k training + 2 validation photos per class from the zip's train/,
  3 test photos per class (30) from its test/. The 32x32 JPEGs are written as they are: each
  backbone's preprocessing upsamples them (bicubic/bilinear, to 224-260 px);
- hymenoptera: ants and bees; k training + 2 validation photos per class from train/, 12 test
  photos per class (24) from val/.
Draw d of k samples with seed 1000 * k + d; every method sees the same folders. Folders are
written under --work (default: a temp folder), never into the repository or the data root.

Methods, each a fresh `cnnlab finetune` process with its own empty feature cache (so every
time is end to end, the backbone passes included), --workers 0 (one core):
- old:       `-m efficientnet_lite0 --epochs 30`: the previous default (head trained 30 epochs
             with AdamW at 1e-3 on Lite0 features);
- new:       no flags: `--model auto` over Lite0/1/2 + the L-BFGS head with a cross-validated L2;
- new-lite0: `-m efficientnet_lite0`: the new head on the old backbone (what the head alone buys);
- finetune:  `-m efficientnet_lite0 --strategy finetune` (15 epochs, augmentation), on the first
             --finetune-draws draws only (it costs ~10-20x the others);
- partial-lite0: `-m efficientnet_lite0 --strategy partial`: the top stage + head trained on
             cached early activations of 4 views per photo, from the fitted head.
Seconds are wall time end to end; cpu_seconds the process's user + system CPU time, which a
busy shared core does not inflate the way it inflates wall time.
Appends one JSON line per run to WORK/results.jsonl (a re-run skips what is there), then prints
the table: mean top-1 test error ± standard deviation over draws, photos wrong, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

DATA_ROOT = Path(os.environ.get("CNNLAB_DATA",
                                Path(__file__).resolve().parents[2] / "shared" / "data"))
METHODS = {
    "old": ["-m", "efficientnet_lite0", "--epochs", "30"],
    "new": [],
    "new-lite0": ["-m", "efficientnet_lite0"],
    "finetune": ["-m", "efficientnet_lite0", "--strategy", "finetune"],
    "partial-lite0": ["-m", "efficientnet_lite0", "--strategy", "partial"],
}
N_VAL = 2  # validation photos per class
N_TEST = {"cifar10": 3, "hymenoptera": 12}  # test photos per class: 30 and 24


def build_cifar(zip_path: Path, out: Path, k: int, seed: int) -> None:
    rng = random.Random(seed)
    with zipfile.ZipFile(zip_path) as z:
        names = [n for n in z.namelist() if n.endswith(".jpg")]
        by = {}
        for n in names:
            part, cls, _ = n.split("/")[-3:]
            by.setdefault((part, cls), []).append(n)
        for (part, cls), files in sorted(by.items()):
            files = sorted(files)
            if part == "train":
                chosen = rng.sample(files, k + N_VAL)
                groups = {"train": chosen[:k], "val": chosen[k:]}
            else:
                groups = {"test": rng.sample(files, N_TEST["cifar10"])}
            for split, picked in groups.items():
                for n in picked:
                    target = out / split / cls / Path(n).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(n))


def build_hymenoptera(root: Path, out: Path, k: int, seed: int) -> None:
    rng = random.Random(seed)
    for cls in ("ants", "bees"):
        train = sorted((root / "train" / cls).iterdir())
        chosen = rng.sample(train, k + N_VAL)
        groups = {"train": chosen[:k], "val": chosen[k:],
                  "test": rng.sample(sorted((root / "val" / cls).iterdir()),
                                     N_TEST["hymenoptera"])}
        for split, picked in groups.items():
            for p in picked:
                target = out / split / cls / p.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)


def run_one(data: Path, method: str, out: Path) -> dict:
    """One fresh process, with an empty feature cache of its own; wall time end to end."""
    cache = out / "cache"
    env = {**os.environ, "CNNLAB_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "cnnlab", "finetune", str(data), *METHODS[method],
           "--workers", "0", "--no-report", "--no-explain", "-q", "--out", str(out / "run")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    r = json.loads((out / "run" / "results.json").read_text())
    shutil.rmtree(cache, ignore_errors=True)
    interval = r.get("top1_interval") or {}
    return {"top1_error": r["top1_error"], "wrong": interval.get("wrong"), "n_test": r["n_test"],
            "backbone": r["backbone"], "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            "l2": (r.get("head_fit") or {}).get("l2"),
            "cv_accuracy": (r.get("head_fit") or {}).get("cv_accuracy"),
            "command": "cnnlab finetune DATA " + " ".join(METHODS[method])}


def summarise(records: list[dict]) -> str:
    lines = ["| data | k | method | draws | top-1 error, mean ± sd | wrong / test | seconds "
             "| CPU seconds | backbones chosen |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    keys = sorted({(r["dataset"], r["k"], r["method"]) for r in records},
                  key=lambda t: (t[0], t[1], list(METHODS).index(t[2])))
    for ds, k, m in keys:
        rs = [r for r in records if (r["dataset"], r["k"], r["method"]) == (ds, k, m)]
        errs = [r["top1_error"] for r in rs]
        sd = f" ± {statistics.stdev(errs):.1f}" if len(errs) > 1 else ""
        wrong = "/".join(str(r["wrong"]) for r in rs)
        chosen = {}
        for r in rs:
            name = r["backbone"].replace("efficientnet_", "")
            chosen[name] = chosen.get(name, 0) + 1
        lines.append(f"| {ds} | {k} | {m} | {len(rs)} | {statistics.mean(errs):.1f}%{sd} | "
                     f"{wrong} of {rs[0]['n_test']} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.0f} | "
                     f"{_mean_cpu(rs)} | "
                     + ", ".join(f"{n} x{c}" for n, c in sorted(chosen.items())) + " |")
    return "\n".join(lines)


def _mean_cpu(rs: list[dict]) -> str:
    cpu = [r["cpu_seconds"] for r in rs if r.get("cpu_seconds") is not None]
    return f"{statistics.mean(cpu):.0f}" if cpu else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--datasets", nargs="+", default=["cifar10", "hymenoptera"])
    ap.add_argument("--k", nargs="+", type=int, default=[3, 5, 8])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--finetune-draws", type=int, default=1)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cnnlab-fewshot-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "results.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["dataset"], r["k"], r["draw"], r["method"]) for r in records}
    for ds in args.datasets:
        for k in args.k:
            for d in range(args.draws):
                data = work / "data" / f"{ds}-k{k}-d{d}"
                if not data.is_dir():
                    seed = 1000 * k + d
                    if ds == "cifar10":
                        build_cifar(args.data_root / "cifar10" / "cifar10-jpg.zip", data, k, seed)
                    else:
                        build_hymenoptera(args.data_root / "hymenoptera", data, k, seed)
                for m in args.methods:
                    if (ds, k, d, m) in done or (m == "finetune" and d >= args.finetune_draws):
                        continue
                    out = work / "runs" / f"{ds}-k{k}-d{d}-{m}"
                    shutil.rmtree(out, ignore_errors=True)
                    rec = {"dataset": ds, "k": k, "draw": d, "method": m,
                           **run_one(data, m, out)}
                    records.append(rec)
                    with log.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(json.dumps(rec), flush=True)
    print(f"\nwork folder: {work}\n")
    print(summarise(records))


if __name__ == "__main__":
    main()
