"""The lab's pipeline against `cnnlab evaluate`: same model, same photos, in one run.

    python benchmarks/eval_vs_lab.py [--folder DIR] [--model efficientnet_lite0] [--repeats 3]

Each measurement is a fresh process (see eval_common.py); lab and cnnlab alternate so that
machine load drifts hit both alike. Prints medians and the ratios lab / cnnlab:
end-to-end wall time (process start to exit, model loading included), CPU time of the process
tree, and peak RSS. cnnlab runs as a user runs it: its defaults, so the engine is `auto` and
the Grad-CAM maps of its mistakes are drawn (issue 27: "end to end with the maps on"), with the
lab's prefix rule (--match prefix). Targets: issue 27, >= 5x faster and <= 1/10 of the peak
memory (earlier, >= 3x and <= 1/5), on the 250 imagenet-samples photos or a part of them.

To rerun the figures in BENCHMARKS.md (100 of the sample photos: every 5th and 5th+2 file of
imagenet-samples as symlinks, so the lab's single batch fits in ~8.6 GB):

    mkdir -p /tmp/s100 && cd ../shared/data/imagenet-samples && ls | sort \
      | awk 'NR % 5 == 1 || NR % 5 == 3' | xargs -I{} ln -sf "$PWD/{}" /tmp/s100/{}
    cd benchmarks && python eval_vs_lab.py --folder /tmp/s100 --repeats 3

Warning: the lab's single autograd batch of 250 photos through EfficientNet-Lite0 peaks at
about 20 GB of RAM; do not run it on a machine with less.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from eval_common import PYTHON, SAMPLES, load_average, measure, median_of

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=SAMPLES)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = sum(1 for _ in args.folder.iterdir())
    print(f"{n} photos in {args.folder}, model {args.model}; {load_average()}", flush=True)

    lab_cmd = [PYTHON, str(HERE / "eval_lab.py"), str(args.folder), "--model", args.model]
    lab, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            lab.append(measure(lab_cmd))
            print(f"  lab    #{i + 1}: {json.dumps(lab[-1])}", flush=True)
            cmd = [PYTHON, "-m", "cnnlab", "evaluate", str(args.folder), "-m", args.model,
                   "--match", "prefix", "--out", f"{tmp}/run{i}", "-q"]
            ours.append(measure(cmd))
            print(f"  cnnlab #{i + 1}: {json.dumps(ours[-1])}", flush=True)
        results = json.loads(Path(f"{tmp}/run0/results.json").read_text())
    a, b = median_of(lab), median_of(ours)
    m = results["models"][0]
    ex = results["explanations"]
    print(f"cnnlab: top-1 {m['top1_error']:.1f}%, top-5 {m['top5_error']:.1f}% "
          f"({m['images_per_second']:.1f} images/s in its inference loop, engine "
          f"{m['engine']['engine']}); maps of {len(ex['cams'])} mistakes in {ex['seconds']:.1f} s")
    print("median                 lab      cnnlab   lab/cnnlab")
    print(f"wall time, s      {a['wall_s']:8.1f}   {b['wall_s']:8.1f}   "
          f"{a['wall_s'] / b['wall_s']:6.2f}x")
    print(f"CPU time tree, s  {a['cpu_s']:8.1f}   {b['cpu_s']:8.1f}   "
          f"{a['cpu_s'] / b['cpu_s']:6.2f}x")
    print(f"peak RSS tree, MB {a['tree_rss_mb']:8.0f}   {b['tree_rss_mb']:8.0f}   "
          f"{a['tree_rss_mb'] / b['tree_rss_mb']:6.2f}x")
    print(f"peak PSS tree, MB {a['tree_pss_mb']:8.0f}   {b['tree_pss_mb']:8.0f}   "
          f"{a['tree_pss_mb'] / b['tree_pss_mb']:6.2f}x")
    print(f"max RSS 1 proc,MB {a['maxrss_mb']:8.0f}   {b['maxrss_mb']:8.0f}   "
          f"{a['maxrss_mb'] / b['maxrss_mb']:6.2f}x")
    print(f"after: {load_average()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
