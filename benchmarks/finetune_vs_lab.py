"""The lab's transfer-learning loop against `cnnlab finetune`, in one run.

    python benchmarks/finetune_vs_lab.py [--data DIR] [--epochs 30]          # freeze, Lite0
    python benchmarks/finetune_vs_lab.py --fewshot cifar10 --k 8 --draws 3 --defaults

Default mode: both train the same new last layer on the same frozen EfficientNet-Lite0 for 30
epochs on the same photos (hymenoptera: train/ 245 files, val/ 153), each in a fresh process,
timed end to end (process start to exit: imports, weights, every photo decoded, training,
scoring). cnnlab runs `--strategy freeze --val-fraction 0` with a cold feature cache (an empty
$CNNLAB_CACHE), so that it trains on all of train/ as the lab does and its held-out set is
val/, the lab's validation set: both numbers are accuracy on the same 153 photos.

`--fewshot DATASET --k K --draws D` (issue 27): the lab's own shape instead — 10 classes of
unfamiliar things, ~8 training photos each, a few test photos — rebuilt per draw by
`finetune_fewshot.py`'s folder builders (train/ k per class, val/ 2, test/ 3 or 12); the lab's
loop scores its test/ photos at the end. `--defaults` runs `cnnlab finetune DATA` with every
default (`--model auto` over Lite0/1/2, the fitted head, the report and the maps of the
mistakes) instead of freeze + Lite0: the command a user types.

cnnlab runs once per `--precisions` entry (`CNNLAB_PRECISION=fp32`, and `auto`, which is bf16
where the CPU has it); the lab's loop is fp32, as written. Wall and CPU seconds both: CPU time
is the steadier figure on a shared machine. Target (issue 27): >= 10x faster end to end, no
more mistakes.
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

from eval_common import DATA_ROOT, PYTHON, load_average
from finetune_fewshot import build_cifar, build_hymenoptera

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its workers, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr[-3000:]}")
    return wall, cpu, proc.stdout


def cpu_line() -> str:
    """lscpu's model name and the flags that decide speed (the project's rule for figures)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "lscpu unavailable"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("Flags")), [])
    speed = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")]
    return f"{model}, {os.cpu_count()} CPUs, flags {' '.join(speed) or 'none of avx2/avx512'}"


# What --keep-exports keeps between runs: the ONNX exports and the backbones' manifests
# (models/frozen_transfer.py), each made once per machine and weights file, like a download.
KEPT = ("onnx", "transfer")


def ours(data: Path, args, precision: str, tmp: str, cache: Path) -> dict:
    """One fresh `cnnlab finetune` process. With --keep-exports `cache` keeps KEPT between
    runs; the feature cache starts empty, so every photo is decoded and every backbone pass is
    run, as for a user's new folder."""
    for entry in cache.iterdir() if cache.is_dir() else []:
        if entry.name not in KEPT or not args.keep_exports:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    cmd = [PYTHON, "-m", "cnnlab", "finetune", str(data), "--out", f"{tmp}/run", "-q"]
    if not args.defaults:
        cmd += ["-m", args.model, "--strategy", "freeze", "--epochs", str(args.epochs),
                "--val-fraction", "0"]
    wall, cpu, _ = timed(cmd, env={"CNNLAB_CACHE": str(cache), "CNNLAB_PRECISION": precision})
    r = json.loads(Path(f"{tmp}/run/results.json").read_text())
    wrong = (r.get("top1_interval") or {}).get("wrong")
    return {"wall_s": wall, "cpu_s": cpu, "accuracy": r["test_accuracy"], "n_test": r["n_test"],
            "wrong": wrong, "backbone": r.get("backbone")}


def lab(data: Path, args) -> dict:
    wall, cpu, out = timed([PYTHON, str(HERE / "finetune_lab.py"), str(data), "--model",
                            args.model, "--epochs", str(args.epochs)])
    r = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": cpu, "accuracy": r["val_accuracy"], "n_test": r["n_val"],
            "wrong": r.get("test_wrong"), "n_test_photos": r.get("n_test"),
            "history": r["history"]}


def folders(args, work: Path) -> list[Path]:
    """The data of each draw: the given folder, or the few-shot draws built under `work`."""
    if not args.fewshot:
        return [args.data]
    out = []
    for d in range(args.draws):
        target = work / f"{args.fewshot}-k{args.k}-d{d}"
        seed = 1000 * args.k + d  # finetune_fewshot.py's draws, so the folders are the same
        if args.fewshot == "cifar10":
            build_cifar(DATA_ROOT / "cifar10" / "cifar10-jpg.zip", target, args.k, seed)
        else:
            build_hymenoptera(DATA_ROOT / "hymenoptera", target, args.k, seed)
        out.append(target)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "hymenoptera")
    ap.add_argument("--model", default="efficientnet_lite0", help="the lab loop's backbone "
                    "(and cnnlab's without --defaults)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--fewshot", choices=["cifar10", "hymenoptera"])
    ap.add_argument("--k", type=int, default=8, help="training photos per class (--fewshot)")
    ap.add_argument("--draws", type=int, default=3, help="few-shot draws (--fewshot)")
    ap.add_argument("--defaults", action="store_true", help="cnnlab with every default")
    ap.add_argument("--keep-exports", action="store_true", help="export the ONNX graphs and "
                    "the manifests once (an untimed first run per draw) and keep them; the "
                    "feature cache stays cold")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                    choices=["fp32", "auto"])
    args = ap.parse_args()
    print(f"{cpu_line()}; {load_average()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        caches = {p: Path(work) / f"cache-{p}" for p in args.precisions}
        draws = folders(args, Path(work))
        if args.keep_exports:  # untimed, on every draw: each backbone a draw chooses
            for p in args.precisions:
                for data in draws:
                    with tempfile.TemporaryDirectory() as tmp:
                        ours(data, args, p, tmp, caches[p])
        for i, data in enumerate(draws):
            row = {"data": data.name, "lab": lab(data, args)}
            for p in args.precisions:
                with tempfile.TemporaryDirectory() as tmp:
                    row[p] = ours(data, args, p, tmp, caches[p])
            rows.append(row)
            parts = [f"lab {row['lab']['wall_s']:.1f} s (CPU {row['lab']['cpu_s']:.1f}), "
                     f"wrong {row['lab']['wrong']}"]
            parts += [f"cnnlab {p} {row[p]['wall_s']:.1f} s (CPU {row[p]['cpu_s']:.1f}), "
                      f"wrong {row[p]['wrong']} of {row[p]['n_test']}, {row[p]['backbone']}"
                      for p in args.precisions]
            print(f"[{i}] {data.name}: " + "; ".join(parts) + f"; {load_average()}", flush=True)
    for p in args.precisions:
        walls = [r["lab"]["wall_s"] / r[p]["wall_s"] for r in rows]
        cpus = [r["lab"]["cpu_s"] / r[p]["cpu_s"] for r in rows]
        print(f"{p}: lab / cnnlab, median over {len(rows)}: wall {statistics.median(walls):.1f}x, "
              f"CPU {statistics.median(cpus):.1f}x; mistakes lab "
              f"{sum(r['lab']['wrong'] or 0 for r in rows)}, cnnlab "
              f"{sum(r[p]['wrong'] or 0 for r in rows)}")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
