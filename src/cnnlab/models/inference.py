"""The engine that runs a pretrained net's forward pass: PyTorch eager, or ONNX Runtime on the same
weights exported to ONNX.

    forward = prepare_forward(net, "auto", identity="efficientnet_lite0:<weights sha256>",
                              input_size=224, device=torch.device("cpu"), log=reporter.log)
    logits = forward(images)            # (N, 3, 224, 224) float32 -> (N, classes) float32
    forward.about                       # {"engine": "onnxruntime", "max_abs_diff": 7.6e-06, ...}

Used by every command that runs a fixed (eval-mode, no gradients) net forward over many photos:
`evaluate`, `predict` and the frozen-feature pass of `finetune` (models/features.py). The maps of
Grad-CAM need gradients and stay in PyTorch.

The graph is exported once per (model identity -- its name and the SHA-256 of its weights --,
input size, ONNX opset, torch version) under `$CNNLAB_CACHE/onnx/<key>/` with the TorchScript
exporter (`dynamo=False`: it needs no onnxscript and exports EfficientNet-Lite in seconds),
written atomically, the batch axis dynamic. At export the graph is checked against the PyTorch
forward on a fixed batch of VERIFY_BATCH inputs (a batch size other than the export's, so the
dynamic axis is checked too): the largest absolute output difference is recorded beside the graph
(verify.json) and in each run's results; above MAX_ABS_DIFF the graph is refused and the run
goes on in PyTorch, with one line saying so. So does a graph that fails to export or to load.

`auto`: ONNX Runtime on the CPU when it is installed, PyTorch on a GPU. Measured with
benchmarks/inference_engines.py (BENCHMARKS.md, "Inference engines"): on this AMX Xeon, batch 32,
ONNX Runtime fp32 ran EfficientNet-Lite0/1/2 faster than PyTorch eager fp32 and than PyTorch
bf16 autocast, on one thread and on two, with the same top-5 on all 250 sample photos.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

ENGINES = ("auto", "torch", "onnxruntime")
# Refusal bound on max |ONNX Runtime - PyTorch| over the check batch's outputs (logits or pooled
# features). Measured: 7.6e-06 on Lite0's logits (fp32 both sides, different kernel orders); a
# graph that differs by 1e-3 computes something else (a wrong op), not rounding.
MAX_ABS_DIFF = 1e-3
OPSET = 17  # supported by the TorchScript exporter of torch 2.14 and by ONNX Runtime >= 1.12
EXPORT_BATCH = 2
VERIFY_BATCH = 3  # != EXPORT_BATCH: a batch axis frozen at export fails the check
GRAPH, RECORD = "model.onnx", "verify.json"


def check_engine(name: str) -> None:
    """A one-line error for an engine name not in ENGINES (the configs' __post_init__)."""
    if name not in ENGINES:
        raise CnnlabError(f"--engine must be one of {', '.join(ENGINES)}, not {name!r}")


def onnxruntime_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def weights_identity(name: str, weights_file: str | Path) -> str:
    """What names a net's weights in the graph cache: its name and the SHA-256 of the file."""
    from cnnlab.models.cache import file_digest

    return f"{name}:{file_digest(weights_file)}"


@dataclass
class Forward:
    """A prepared forward pass: `forward(x)` with x a float32 (N, 3, H, W) batch on `device`,
    returning float32 outputs (on the CPU for ONNX Runtime, on `device` for PyTorch)."""

    engine: str  # the engine that runs: "torch" or "onnxruntime"
    run: Callable[[torch.Tensor], torch.Tensor]
    about: dict[str, Any] = field(default_factory=dict)  # for results.json

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def torch_forward(model: nn.Module, device: torch.device, channels_last: bool = True,
                  about: dict[str, Any] | None = None) -> Forward:
    """PyTorch eager fp32, as cnnlab has always run it (NHWC on request: faster convolutions)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(device=device, memory_format=memory_format)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.inference_mode():
            return model(x).float()

    return Forward("torch", run, {"engine": "torch", **(about or {})})


def graph_dir(identity: str, input_size: int, root: Path | None = None) -> Path:
    """The cache folder of one exported graph (its key: identity, input size, opset, torch)."""
    from cnnlab.models.cache import cache_root

    spec = {"identity": identity, "input_size": input_size, "opset": OPSET,
            "torch": torch.__version__, "exporter": "torchscript"}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return (root or cache_root()) / "onnx" / key[:32]


def check_batch(input_size: int, n: int = VERIFY_BATCH) -> torch.Tensor:
    """The fixed batch both engines run at export: normalised-image-like N(0, 1) values, seeded."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, input_size, input_size, generator=g)


def export_graph(model: nn.Module, target: Path, input_size: int) -> None:
    """torch.onnx.export of the eval-mode CPU net into `target`, atomically (temp + rename in
    the same folder: a concurrent run or a crash never leaves a torn graph)."""
    import warnings

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # the exporter's notes on the TorchScript path
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (check_batch(input_size, EXPORT_BATCH),), tmp,
                              dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                              opset_version=OPSET, do_constant_folding=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The threads torch would use (torch.get_num_threads(): OMP_NUM_THREADS, --threads), so the
    # engines compare like for like; inter-op 1: one graph, one request at a time.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are not the user's to act on
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_run(session) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        # ONNX Runtime reads NCHW float32 memory: a channels-last batch is copied back to NCHW.
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {"x": array})[0])
    return run


def max_abs_diff(model: nn.Module, session, input_size: int) -> float | None:
    """max |ONNX Runtime - PyTorch| over the check batch's outputs; None when the shapes differ
    or a value is not finite (JSON has no inf or NaN; either is a refusal)."""
    import math

    x = check_batch(input_size)
    with torch.inference_mode():
        expected = model.eval().cpu()(x).float()
    got = _ort_run(session)(x)
    if got.shape != expected.shape:
        return None
    diff = float((got - expected).abs().max())
    return diff if math.isfinite(diff) else None


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "max_abs_diff" in record else None


def _built(model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """`model` itself, or what the function `model` builds (a net that is needed only to export
    its graph or to run it in PyTorch is built only then: issue 27 item 4)."""
    return model if isinstance(model, nn.Module) else model()


def onnx_forward(model: nn.Module | Callable[[], nn.Module], identity: str, input_size: int,
                 threads: int, root: Path | None = None
                 ) -> tuple[Forward | None, dict[str, Any], str]:
    """The ONNX Runtime forward of `model` (exported and checked once, then read from the
    cache), or None and the reason it was refused. Returns (forward, about, reason).
    `model` may be a function that builds the net: called only when the graph is exported."""
    from cnnlab.runs import atomic_write_text

    folder = graph_dir(identity, input_size, root)
    graph, record_path = folder / GRAPH, folder / RECORD
    record = _read_record(record_path) if graph.is_file() else None
    about: dict[str, Any] = {"engine": "onnxruntime", "onnxruntime": onnxruntime_version(),
                             "graph": str(graph), "opset": OPSET, "bound": MAX_ABS_DIFF,
                             "exported": record is None}
    start = time.perf_counter()
    try:
        session = None
        if record is not None:
            try:
                session = ort_session(graph, threads)
            except Exception:  # a damaged cached graph: exported again below
                record = None
        if record is None:  # not exported yet, damaged, or its record lost: export and check
            about["exported"] = True
            model = _built(model)
            export_graph(model.eval().cpu(), graph, input_size)
            session = ort_session(graph, threads)
            record = {"identity": identity, "input_size": input_size, "opset": OPSET,
                      "torch": torch.__version__, "check_batch": VERIFY_BATCH,
                      "max_abs_diff": max_abs_diff(model, session, input_size)}
            atomic_write_text(record_path, json.dumps(record, indent=2))
    except CnnlabError:  # building the net failed (its weights do not fit): the user's to fix
        raise
    except Exception as exc:  # an op the exporter or ONNX Runtime does not support, disk full
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return None, about, f"{type(exc).__name__}: {first}"
    about["seconds"] = round(time.perf_counter() - start, 3)
    about["max_abs_diff"] = record["max_abs_diff"]
    diff = record["max_abs_diff"]
    if diff is None:
        return None, about, "its outputs do not match PyTorch's in shape or are not finite"
    if diff > MAX_ABS_DIFF:
        return None, about, (f"its outputs differ from PyTorch's by {diff:.2g} (more than "
                             f"{MAX_ABS_DIFF:g}) on the check batch")
    return Forward("onnxruntime", _ort_run(session), about), about, ""


def resolve_engine(requested: str, device: torch.device) -> str:
    """The engine `requested` means here: auto is ONNX Runtime on the CPU when installed (it
    measured faster, module docstring), PyTorch on a GPU (ONNX Runtime's CUDA provider is not
    installed with it)."""
    check_engine(requested)
    if requested == "auto":
        usable = device.type == "cpu" and onnxruntime_version() is not None
        return "onnxruntime" if usable else "torch"
    if requested == "onnxruntime" and onnxruntime_version() is None:
        raise CnnlabError("--engine onnxruntime: onnxruntime is not installed "
                          "(pip install onnxruntime), or use --engine torch")
    return requested


def prepare_forward(model: nn.Module | Callable[[], nn.Module], requested: str, *,
                    identity: str, input_size: int,
                    device: torch.device | str = "cpu", channels_last: bool = True,
                    log: Callable[[str], Any] | None = None, root: Path | None = None,
                    label: str = "") -> Forward:
    """The forward pass of `model` on the engine `requested` (auto, torch, onnxruntime).

    model: the net, or a function that builds it, called only when PyTorch runs the pass or the
    graph is exported: scoring on a cached graph then imports neither the net's library (timm,
    torchvision) nor loads its weights into PyTorch (~2.5 CPU-s, BENCHMARKS.md "Start-up").

    identity: names the weights (model name + weights digest): the exported graph's cache key
    with input_size. An ONNX graph that cannot be exported or loaded, or whose outputs differ
    from PyTorch's by more than MAX_ABS_DIFF, is refused: the pass runs in PyTorch and `log`
    gets one line saying why. `forward.about` says which engine ran and what the check found."""
    device = torch.device(device)
    engine = resolve_engine(requested, device)
    if engine == "onnxruntime" and device.type != "cpu":
        if log is not None:
            log(f"{label or identity}: onnxruntime runs on the CPU here; PyTorch runs on {device}")
        engine = "torch"
    if engine == "torch":
        return torch_forward(_built(model), device, channels_last, {"requested": requested})
    forward, about, reason = onnx_forward(model, identity, input_size,
                                          torch.get_num_threads(), root)
    if forward is None:
        if log is not None:
            log(f"{label or identity}: ONNX graph refused ({reason}); running PyTorch instead")
        return torch_forward(_built(model), device, channels_last,
                             {"requested": requested, "refused": {**about, "reason": reason}})
    forward.about["requested"] = requested
    return forward
