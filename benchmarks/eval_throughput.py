"""End-to-end `cnnlab evaluate` throughput against the model's own forward throughput.

    python benchmarks/eval_throughput.py [--model efficientnet_lite0] [--repeats 3]

- forward: the model alone on pre-decoded tensors, batch size 16, channels_last,
  inference_mode (what cnnlab's loop does once the images are decoded);
- decode: the preprocessing alone (`load_image`, draft on), one process;
- end-to-end: `evaluate()` on the 250 imagenet-samples photos with 0 and 2 decoding workers,
  images/s of its inference loop (decoding + inference, model loading excluded).
Target (issue): end-to-end >= 80% of forward at the same batch size. Medians of --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from cnnlab.data.decode import load_image
from cnnlab.models.registry import create_pretrained
from cnnlab.progress import Reporter
from cnnlab.tasks.evaluate import EvaluateConfig, evaluate
from eval_common import SAMPLES, load_average

BATCH = 16


def forward_rate(model, x: torch.Tensor, n_batches: int) -> float:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up: first call allocates and picks kernels
        start = time.perf_counter()
        for _ in range(n_batches):
            model(x)
        return n_batches * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"model {args.model}, batch {BATCH}, torch threads {torch.get_num_threads()}; "
          f"{load_average()}", flush=True)
    photos = sorted(SAMPLES.iterdir())
    model, pp, _ = create_pretrained(args.model)
    x = torch.stack([load_image(p, pp) for p in photos[:BATCH]])
    rates: dict[str, list[float]] = {"forward": [], "decode": [], "e2e 0 workers": [],
                                     "e2e 2 workers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            rates["forward"].append(forward_rate(model, x, len(photos) // BATCH))
            start = time.perf_counter()
            for p in photos:
                load_image(p, pp)
            rates["decode"].append(len(photos) / (time.perf_counter() - start))
            for workers in (0, 2):
                config = EvaluateConfig(path=str(SAMPLES), models=(args.model,),
                                        workers=workers, batch_size=BATCH, report=False)
                results = evaluate(config, Reporter(quiet=True), out=f"{tmp}/w{workers}-{i}")
                rates[f"e2e {workers} workers"].append(results["models"][0]["images_per_second"])
            print(f"  #{i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()),
                  flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print("median images/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    for workers in (0, 2):
        e2e = med[f"e2e {workers} workers"]
        print(f"end-to-end / forward, {workers} workers: {100 * e2e / med['forward']:.0f}%")
    # Both stages on the same cores: if neither overlapped, 1/rate would add up.
    serial = 1 / (1 / med["forward"] + 1 / med["decode"])
    print(f"no-overlap bound (1/forward + 1/decode): {serial:.1f} images/s "
          f"({100 * serial / med['forward']:.0f}% of forward)")
    print(f"after: {load_average()}")


if __name__ == "__main__":
    main()
