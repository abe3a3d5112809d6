"""`cnnlab evaluate` memory stays flat as the folder grows: 100 photos against 1,000.

    python benchmarks/eval_memory.py [--model efficientnet_lite0] [--repeats 3]

The 1,000-photo folder is the 250 imagenet-samples photos symlinked 4 times under new names
(`n01440764_tench_2.JPEG`, ...) in a temporary directory; the 100-photo folder is the first 100.
Each run is a fresh `cnnlab evaluate` process (eval_common.py measures it); sizes alternate.
Target (issue): peak RSS for 1,000 photos within 10% of that for 100.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from eval_common import PYTHON, SAMPLES, load_average, measure, median_of


def make_folder(dst: Path, photos: list[Path], copies: int) -> Path:
    dst.mkdir()
    for k in range(copies):
        for p in photos:
            name = p.name if k == 0 else f"{p.stem}_{k + 1}{p.suffix}"
            (dst / name).symlink_to(p)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    photos = sorted(SAMPLES.iterdir())
    print(f"model {args.model}; {load_average()}", flush=True)
    runs: dict[int, list[dict[str, float]]] = {100: [], 1000: []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {100: make_folder(Path(tmp) / "p100", photos[:100], 1),
                   1000: make_folder(Path(tmp) / "p1000", photos, 4)}
        for i in range(args.repeats):
            for n, folder in folders.items():
                cmd = [PYTHON, "-m", "cnnlab", "evaluate", str(folder), "-m", args.model,
                       "--out", f"{tmp}/run{n}-{i}", "-q"]
                runs[n].append(measure(cmd))
                print(f"  {n:5d} photos #{i + 1}: {json.dumps(runs[n][-1])}", flush=True)
        scored = json.loads(Path(f"{tmp}/run1000-0/results.json").read_text())
        assert scored["models"][0]["n_images"] == 1000
    a, b = median_of(runs[100]), median_of(runs[1000])
    print("median               100 photos   1000 photos   1000/100")
    for key, label in (("tree_rss_mb", "peak RSS tree, MB"), ("tree_pss_mb", "peak PSS tree, MB"),
                       ("maxrss_mb", "max RSS 1 proc,MB"),
                       ("wall_s", "wall time, s")):
        print(f"{label:18s} {a[key]:10.0f}   {b[key]:11.0f}   {b[key] / a[key]:8.2f}x")
    print(f"after: {load_average()}")


if __name__ == "__main__":
    main()
