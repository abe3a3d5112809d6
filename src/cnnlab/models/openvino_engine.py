"""OpenVINO's CPU plugin as the engine of a pretrained net's forward pass: `--engine openvino`.

    compiled = compile_graph(Path(".../model.onnx"), threads=2)    # the graph ONNX Runtime runs
    run = output_runner(compiled, ["y"])                             # x (N, 3, H, W) -> [y]

OpenVINO reads the ONNX graph that models/inference.py exports, checks and caches for ONNX
Runtime (the same file, no second export). Measured on this AMX Xeon, fp32, 2 threads, batch 8
and 32: faster than ONNX Runtime on EfficientNet-Lite0/1/2 (BENCHMARKS.md, "Inference engines").
Optional: `pip install cnnlab[openvino]`; without it `--engine openvino` is a one-line error.

fp32, always: on a CPU with AMX or avx512_bf16 the CPU plugin's default inference precision is
bf16 (logits off by ~1e-1, top-5 changes); INFERENCE_PRECISION_HINT=f32 keeps the numbers those
of the fp32 net, which is what `--engine` promises (models/inference.py checks them against
ONNX Runtime's, themselves checked against PyTorch's at export).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

MISSING = ("--engine openvino: openvino is not installed (pip install 'cnnlab[openvino]' or "
           "pip install openvino), or use --engine onnxruntime")


def openvino_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_openvino() -> None:
    """A one-line CnnlabError when OpenVINO is not installed."""
    if openvino_version() is None:
        raise CnnlabError(MISSING)


def compile_graph(path: Path, threads: int):
    """The ONNX graph at `path` compiled for OpenVINO's CPU plugin: fp32, `threads` inference
    threads, one stream (one request at a time, as the callers run it), latency mode."""
    require_openvino()
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "f32",  # not the bf16 the plugin picks on AMX CPUs
        "INFERENCE_NUM_THREADS": int(threads),  # as ONNX Runtime's intra-op threads
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def output_runner(compiled, names: list[str]) -> Callable[[Any], list[Any]]:
    """x (a float32 NCHW numpy array or tensor) -> the named outputs as float32 numpy arrays.

    One infer request, reused. The input array is read in place (share_inputs: no copy of the
    batch); the outputs are copies (share_outputs=False), not views of the request's buffers,
    which the next call overwrites."""
    import numpy as np

    request = compiled.create_infer_request()
    ports = [compiled.output(n) for n in names]

    def run(x) -> list[Any]:
        array = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        results = request.infer({0: array}, share_inputs=True, share_outputs=False)
        return [results[p] for p in ports]

    return run


def checked_runners(graph: Path, threads: int, layer: bool, check, expected, bound: float
                    ) -> tuple[Callable | None, Callable | None, dict[str, Any], str]:
    """OpenVINO's runs of the exported `graph`, checked: (run_y, run_y_a, about, reason).

    check: the check batch (float32 NCHW numpy); expected: the logits of the checked engine
    (ONNX Runtime, itself within its recorded difference of PyTorch's) on it; bound: the largest
    |OpenVINO - expected| allowed. run_y(x) -> [logits]; run_y_a(x) -> [logits, activations]
    when `layer` (the graph's second output a), else None. On a refusal (outputs off by more
    than `bound`, not finite, or a graph OpenVINO cannot compile) both runs are None and
    `reason` says why, in one line."""
    import numpy as np

    about: dict[str, Any] = {"openvino": openvino_version(), "precision_hint": "f32"}
    try:
        compiled = compile_graph(graph, threads)
        run_y = output_runner(compiled, ["y"])
        got = run_y(check)[0]
    except CnnlabError:
        raise
    except Exception as exc:  # an op the plugin does not support, a damaged graph
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return None, None, about, f"{type(exc).__name__}: {first}"
    if got.shape != expected.shape or not np.isfinite(got).all():
        return None, None, about, "its outputs do not match in shape or are not finite"
    diff = float(np.abs(got - expected).max())
    about["max_abs_diff_vs_onnxruntime"] = diff
    if diff > bound:
        return None, None, about, (f"its outputs differ from ONNX Runtime's by {diff:.2g} (more "
                                   f"than {bound:.2g}) on the check batch")
    return run_y, output_runner(compiled, ["y", "a"]) if layer else None, about, ""
