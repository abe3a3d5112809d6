"""`cnnlab params` on the meta device vs the straightforward way (real weights, real forward).

The straightforward way to tabulate a model — what most notebook snippets and summary packages
do — builds the model with real, initialised weights and runs a real forward pass with hooks.
cnnlab builds on PyTorch's meta device: shapes only, no storage, no arithmetic. Both produce the
same table (asserted here). Each measurement runs in a fresh process so peak RSS is its own.

    .venv/bin/python benchmarks/params_meta_vs_real.py [--models resnet152 vit_l_16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from cnnlab.models.meta import build_on_meta
from cnnlab.analysis.profile import profile_model
from cnnlab.models import create_model, get_spec
name, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
spec = get_spec(name)
t0 = time.perf_counter()
if mode == "meta":
    model = build_on_meta(lambda: create_model(name))
else:
    model = create_model(name)  # real weights, initialised as the builder does
profile = profile_model(model, spec.default_input, name=name)
seconds = time.perf_counter() - t0
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "params": profile.total_params,
                  "macs": profile.total_macs}))
"""


def measure(name: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, mode], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet152", "vit_l_16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<12} {'mode':<5} {'median s':>9} {'peak MiB':>9}")
    for name in args.models:
        runs = {mode: [measure(name, mode) for _ in range(args.repeats)]
                for mode in ("real", "meta")}
        assert runs["real"][0]["params"] == runs["meta"][0]["params"]
        assert runs["real"][0]["macs"] == runs["meta"][0]["macs"]
        med = {m: (statistics.median(r["seconds"] for r in rs),
                   statistics.median(r["peak_mib"] for r in rs)) for m, rs in runs.items()}
        for mode in ("real", "meta"):
            print(f"{name:<12} {mode:<5} {med[mode][0]:>9.2f} {med[mode][1]:>9.0f}")
        print(f"{name:<12} ratio real/meta: {med['real'][0] / med['meta'][0]:.1f}x time, "
              f"{med['real'][1] / med['meta'][1]:.1f}x peak memory "
              f"(same table: {runs['meta'][0]['params']:,} params, "
              f"{runs['meta'][0]['macs']:,} MACs)")


if __name__ == "__main__":
    main()
