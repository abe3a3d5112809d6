"""Start-up of `cnnlab evaluate` and `cnnlab predict`: the seconds before the first photo is read,
and what each heavy module's import costs on its own.

    python benchmarks/startup.py [--folder DIR] [--repeats 3]

Each measurement is a fresh Python process. The command runs in-process under an audit hook
(`sys.addaudithook`) that notes the wall and CPU seconds since the interpreter started when the
first file under the photo folder is opened; `--workers 0` keeps that open in the measured
process, so its CPU time is this process's own (with decoding workers the first open happens
in a child). The run also lists which of the heavy modules it imported. Then each module alone
(`python -c "import torch, X"` minus `python -c "import torch"`, CPU seconds of the child).

CPU seconds are the figures to read on a shared machine: run it pinned to one core with one
thread (`taskset -c 0 env OMP_NUM_THREADS=1`), where other processes stretch wall time but
barely change CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
HEAVY = ("torch", "torchvision", "timm", "onnxruntime", "pytorch_grad_cam", "cv2", "pandas",
         "scipy", "sklearn", "matplotlib", "jinja2", "onnx")

# Runs in the child: the hook, the command, then one JSON line on stderr.
CHILD = r"""
import json, os, sys, time
t0, folder, first = time.perf_counter(), os.path.realpath(sys.argv[1]), []
def hook(event, args):
    if event == "open" and not first and isinstance(args[0], (str, os.PathLike)):
        path = os.path.realpath(os.fspath(args[0]))
        if path.startswith(folder + os.sep) and os.path.isfile(path):
            first.append((time.perf_counter() - t0, time.process_time()))
sys.addaudithook(hook)
from cnnlab.cli import main
code = main(sys.argv[3:])
print(json.dumps({"code": code, "first_wall": first[0][0] if first else None,
                  "first_cpu": first[0][1] if first else None,
                  "total_wall": time.perf_counter() - t0, "total_cpu": time.process_time(),
                  "modules": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}),
      file=sys.stderr)
"""


def run_command(folder: Path, argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), json.dumps(HEAVY), *argv],
                          capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"code": None}
    if result["code"] != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return result


def import_cpu(modules: str) -> float:
    """CPU seconds of a fresh `python -c "import <modules>"` (user + system, the child's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=SAMPLES)
    ap.add_argument("--limit", type=int, default=40, help="photos evaluate scores (40)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--commands-only", action="store_true",
                    help="skip the imports-alone part (for before/after pairs run back to back)")
    args = ap.parse_args()
    one, five, fifteen = os.getloadavg()
    print(f"load average {one:.1f} {five:.1f} {fifteen:.1f}; torch threads: "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    photo = sorted(p for p in args.folder.iterdir() if p.is_file())[0]
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "evaluate (maps)": ["evaluate", str(args.folder), "-m", "efficientnet_lite0",
                                "--limit", str(args.limit), "--workers", "0", "-q"],
            "evaluate --no-explain": ["evaluate", str(args.folder), "-m", "efficientnet_lite0",
                                      "--limit", str(args.limit), "--workers", "0", "-q",
                                      "--no-explain"],
            "predict (1 photo)": ["predict", "efficientnet_lite0", str(photo), "--workers", "0"],
        }
        for number, (name, argv) in enumerate(commands.items()):
            runs = []
            for i in range(args.repeats):
                out = ["--out", f"{tmp}/{number}-{i}"] if argv[0] == "evaluate" else []
                runs.append(run_command(args.folder, [*argv, *out]))
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("first_wall", "first_cpu", "total_wall", "total_cpu")}
            print(f"{name:24s} first photo after {med['first_cpu']:5.2f} CPU-s "
                  f"({med['first_wall']:5.1f} s wall); whole run {med['total_cpu']:5.2f} CPU-s "
                  f"({med['total_wall']:5.1f} s); imported: {', '.join(runs[0]['modules'])}",
                  flush=True)
    if args.commands_only:
        return
    base = statistics.median(import_cpu("torch") for _ in range(args.repeats))
    print(f"import torch alone: {base:.2f} CPU-s; each module on top of torch:")
    for module in HEAVY[1:]:
        extra = statistics.median(import_cpu(f"torch, {module}") for _ in range(args.repeats))
        print(f"  {module:18s} +{extra - base:5.2f} CPU-s", flush=True)


if __name__ == "__main__":
    main()
