"""One decode for many nets (issue 27 item 2): the same commands on the code before and after, in
the same run, alternating.

    python benchmarks/decode_once.py --before /tmp/base/src [--after src] [--repeats 2]

`--before` is a `src/` folder of the code to compare with (e.g. `git archive <commit> src | tar
-x -C /tmp/base`); `--after` defaults to this checkout's. Each command runs in a fresh process
with CNNLAB_PRECISION=fp32 and one CNNLAB_CACHE under --work, whose exported ONNX graphs are
warmed first (both versions name them alike) and whose feature cache is emptied before every
finetune run, so every run computes its features:
- evaluate: `cnnlab evaluate <imagenet-samples> --no-explain` (Lite0/1/2, 250 photos);
- finetune: `cnnlab finetune <lab-like folder> --no-explain` (`--model auto`: Lite0/1/2) on
  hymenoptera in the lab's shape: 52 train + validation photos per class from train/ (104, the lab's
  count), 12 test photos per class from val/; the scoring seconds are the sum of
  backbone_choice.json's rows (features + cross-validation), with the choice and its scores.
Wall seconds and the CPU seconds (user + system, the process and its DataLoader workers) of each
run; a busy machine inflates the wall time far more than the CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CNNLAB_DATA", HERE.parent / "shared" / "data"))


def lab_like(out: Path) -> Path:
    """hymenoptera in the lab's shape: 52 + 52 train/val photos (first by name), 12 + 12 test."""
    root = DATA_ROOT / "hymenoptera"
    for cls in ("ants", "bees"):
        train = sorted(p for p in (root / "train" / cls).iterdir() if p.suffix == ".jpg")[:52]
        test = sorted(p for p in (root / "val" / cls).iterdir() if p.suffix == ".jpg")[:12]
        for part, files in (("train", train[:42]), ("val", train[42:]), ("test", test)):
            (out / part / cls).mkdir(parents=True, exist_ok=True)
            for p in files:
                shutil.copy(p, out / part / cls / p.name)
    return out


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=HERE / "src")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", choices=("evaluate", "finetune"), default=None)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="the cache's ONNX graphs are already exported (a re-run in --work)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="decode-once-"))
    cache = work / "cache"
    data = lab_like(work / "lab-like") if not (work / "lab-like").is_dir() else work / "lab-like"
    samples = DATA_ROOT / "imagenet-samples"
    versions = {"before": args.before.resolve(), "after": args.after.resolve()}

    def env(version: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(versions[version]), "CNNLAB_PRECISION": "fp32",
                "CNNLAB_CACHE": str(cache)}

    def evaluate(version: str, i: int) -> dict:
        out = work / f"eval-{version}-{i}"
        r = timed([sys.executable, "-m", "cnnlab", "evaluate", str(samples), "--no-explain",
                   "-q", "--out", str(out)], env(version))
        res = json.loads((out / "results.json").read_text())
        return {**r, "models": {m["name"]: [m["top1_error"], m["top5_error"],
                                            round(m["seconds"], 2)] for m in res["models"]}}

    def finetune(version: str, i: int) -> dict:
        shutil.rmtree(cache / "features", ignore_errors=True)
        out = work / f"ft-{version}-{i}"
        r = timed([sys.executable, "-m", "cnnlab", "finetune", str(data), "--no-explain", "-q",
                   "--out", str(out)], env(version))
        choice = json.loads((out / "backbone_choice.json").read_text())
        res = json.loads((out / "results.json").read_text())
        return {**r, "scoring_s": round(sum(row["seconds"] for row in choice["rows"]), 2),
                "chosen": choice["chosen"], "top1_error": res["top1_error"],
                "rows": {row["backbone"]: [row["cv_log_loss"], row["cv_accuracy"]]
                         for row in choice["rows"]}}

    tasks = {"evaluate": evaluate, "finetune": finetune}
    if args.only:
        tasks = {args.only: tasks[args.only]}
    for name, fn in tasks.items():
        if args.warmup:  # exports the ONNX graphs both versions read, fills the page cache
            fn("after", -1)
        records: dict[str, list[dict]] = {"before": [], "after": []}
        for i in range(args.repeats):
            for version in ("before", "after") if i % 2 == 0 else ("after", "before"):
                load = os.getloadavg()[0]
                rec = {**fn(version, i), "load1": round(load, 2)}
                records[version].append(rec)
                print(json.dumps({"task": name, "version": version, **rec}), flush=True)
        for version, recs in records.items():
            print(f"{name} {version}: wall {statistics.median(r['wall_s'] for r in recs):.1f} s, "
                  f"cpu {statistics.median(r['cpu_s'] for r in recs):.1f} s (median of "
                  f"{len(recs)})", flush=True)


if __name__ == "__main__":
    main()
