"""Commands import only what they use (issue 27 item 4): a fresh process runs the command, then
reports which heavy modules ended up in sys.modules.

`evaluate` draws the maps of its mistakes with cnnlab's batched Grad-CAM (analysis/explanations.py)
and cv2, not through the grad-cam package, whose import loads matplotlib.pyplot, scipy, sklearn
and torchvision's ops for methods these maps never use (~2 CPU-s, BENCHMARKS.md "Start-up").
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, sys
from cnnlab.cli import main
code = main(sys.argv[2:])
heavy = json.loads(sys.argv[1])
print(json.dumps({"code": code, "modules": sorted(m for m in heavy if m in sys.modules)}))
"""
# Imported by none of the commands below (each is used by other commands: sweeps, explain's
# other methods, the Python API's tables, figures).
NOT_NEEDED = ["pytorch_grad_cam", "sklearn", "scipy", "pandas", "matplotlib"]
# Lite0 gets two of these wrong (a hammerhead and a terrapin) and the tench right.
PHOTOS = ["n01440764_tench.JPEG", "n01494475_hammerhead.JPEG", "n01667778_terrapin.JPEG"]


def _modules_after(argv: list[str], tmp_path) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([*NOT_NEEDED, "cv2"]), *argv],
                          capture_output=True, text=True, timeout=900,
                          env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    return out["modules"]


def _env(tmp_path) -> dict[str, str]:
    import os

    return {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def test_evaluate_with_maps_imports_no_grad_cam_scipy_sklearn_pandas_matplotlib(
        shared_data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).symlink_to(shared_data("imagenet-samples", name))
    out = tmp_path / "run"
    # --engine torch: the test is about the maps' imports; an ONNX export would only add time.
    modules = _modules_after(["evaluate", str(folder), "-m", "efficientnet_lite0", "--workers",
                              "0", "--engine", "torch", "--out", str(out), "-q"], tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert len(results["explanations"]["cams"]) == 2  # the maps were drawn
    assert modules == ["cv2"], modules  # cv2 draws them; nothing else of the list
