"""Two cnnlab source trees' `cnnlab finetune DATA` (every default) in one run, interleaved.

    python benchmarks/finetune_ab.py --tree before=/path/to/old/src --tree after=src \\
        [--fewshot cifar10 --k 8 --draws 2] [--hymenoptera] [--precisions fp32 auto]

For a change to the defaults (issue 27: "no more mistakes than today, measured in the same run
before and after"): each folder is run by each tree in turn (A, B, A, B...), each a fresh
process with PYTHONPATH set to its tree, an empty feature cache and, per tree and precision,
what a machine keeps between runs (the ONNX exports and the backbones' manifests, KEPT),
made by an untimed first run of that tree on every folder, as `finetune_vs_lab.py --defaults
--keep-exports` times cnnlab. Prints per run: wall and CPU seconds (the process and its
workers: the steadier figure on a shared machine), test mistakes, the backbone chosen; then
per tree the sums and the CPU ratio. The folders: the few-shot CIFAR-10 draws of
`finetune_fewshot.py` (the same seeds as finetune_vs_lab.py) and/or hymenoptera itself (train/
245 photos, its val/ 153 as the test set).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from eval_common import DATA_ROOT, PYTHON, load_average
from finetune_vs_lab import cpu_line, folders, timed

# What a machine keeps between runs: the exported graphs and the backbones' manifests
# (models/frozen_transfer.py), both made once per weights file, like a download.
KEPT = ("onnx", "transfer")


def run_tree(src: str, data: Path, precision: str, cache: Path, tmp: str) -> dict:
    """One fresh default run of the tree at `src`; the feature cache emptied, exports kept."""
    for entry in cache.iterdir() if cache.is_dir() else []:
        if entry.name not in KEPT:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out = Path(tmp) / "run"
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, _ = timed([PYTHON, "-m", "cnnlab", "finetune", str(data), "--out", str(out),
                          "-q"], env={"PYTHONPATH": src, "CNNLAB_CACHE": str(cache),
                                      "CNNLAB_PRECISION": precision})
    r = json.loads((out / "results.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "wrong": r["top1_interval"]["wrong"],
            "n_test": r["n_test"], "backbone": r["backbone"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR (twice)")
    ap.add_argument("--fewshot", choices=["cifar10", "hymenoptera"])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--hymenoptera", action="store_true", help="also the full hymenoptera set")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "auto"])
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    print(f"{cpu_line()}; {load_average()}", flush=True)
    totals = {(name, p): {"wall_s": 0.0, "cpu_s": 0.0, "wrong": 0} for name in trees
              for p in args.precisions}
    with tempfile.TemporaryDirectory() as work:
        data = folders(args, Path(work)) if args.fewshot else []
        if args.hymenoptera:
            data.append(DATA_ROOT / "hymenoptera")
        caches = {(name, p): Path(work) / f"cache-{name}-{p}" for name in trees
                  for p in args.precisions}
        for folder in data:  # each tree's exports (graphs, manifests), untimed: every
            for p in args.precisions:  # backbone a folder chooses is exported before timing
                for name, src in trees.items():
                    run_tree(src, folder, p, caches[(name, p)], work)
        for folder in data:
            for p in args.precisions:
                for name, src in trees.items():
                    r = run_tree(src, folder, p, caches[(name, p)], work)
                    for key in ("wall_s", "cpu_s", "wrong"):
                        totals[(name, p)][key] += r[key]
                    print(f"{folder.name} {p} {name}: {r['wall_s']:.1f} s wall, "
                          f"{r['cpu_s']:.1f} CPU-s, wrong {r['wrong']} of {r['n_test']}, "
                          f"{r['backbone']}; {load_average()}", flush=True)
    for p in args.precisions:
        first, second = list(trees)
        a, b = totals[(first, p)], totals[(second, p)]
        print(f"{p}: {first} {a['cpu_s']:.1f} CPU-s / {a['wall_s']:.1f} s, wrong {a['wrong']}; "
              f"{second} {b['cpu_s']:.1f} CPU-s / {b['wall_s']:.1f} s, wrong {b['wrong']}; "
              f"CPU {a['cpu_s'] / b['cpu_s']:.2f}x, wall {a['wall_s'] / b['wall_s']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
