"""`cnnlab finetune` on hymenoptera (ants/bees): accuracy and wall time of the defaults.

    python benchmarks/finetune_hymenoptera.py [--data DIR] [--out DIR]

Three fresh processes, timed end to end:
1. `cnnlab finetune DATA` (strategy freeze, every default) with a cold feature cache;
2. the same again: the features come from the warm cache, so no backbone pass at all;
3. `cnnlab finetune DATA --compare` (freeze and finetune on one split; the cache is warm for
   freeze, finetune trains every layer with augmentation).
hymenoptera has train/ and val/ only, so val/ (153 photos) is the held-out test set and 20% of
train/ (49 photos) is the validation set that picks the epoch. PyTorch's transfer-learning
tutorial reaches ~95% on val/ by fine-tuning ResNet-18 (choosing its best epoch on val/ itself).
Target (issue): freeze >= 94% on val/; finetune does not diverge.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_common import DATA_ROOT, PYTHON, load_average


def timed(cmd: list[str], env: dict[str, str]) -> float:
    import os

    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def summary(run: Path) -> dict:
    r = json.loads((run / "results.json").read_text())
    return {"strategy": r["settings"]["strategy"], "epochs": r["epochs_run"],
            "kept": r["selected_epoch"], "train_acc": r["train_accuracy"],
            "val_acc": r["val_accuracy"], "test_acc_on_val_folder": r["test_accuracy"],
            "n": [r["n_train"], r["n_val"], r["n_test"]], "seconds": r["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "hymenoptera")
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    print(f"data {args.data}; {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        env = {"CNNLAB_CACHE": f"{tmp}/cache"}
        base = [PYTHON, "-m", "cnnlab", "finetune", str(args.data), "-q"]
        cold = timed([*base, "--out", str(out / "freeze-cold")], env)
        print(f"freeze, cold cache: {cold:.1f} s {summary(out / 'freeze-cold')}; "
              f"{load_average()}", flush=True)
        warm = timed([*base, "--out", str(out / "freeze-warm")], env)
        print(f"freeze, warm cache: {warm:.1f} s {summary(out / 'freeze-warm')}; "
              f"{load_average()}", flush=True)
        both = timed([*base, "--compare", "--out", str(out / "compare")], env)
        for s in ("freeze", "finetune"):
            print(f"compare/{s}: {summary(out / 'compare' / s)}", flush=True)
        print(f"compare (freeze warm + finetune): {both:.1f} s; {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
