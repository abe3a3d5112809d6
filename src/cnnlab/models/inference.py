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

Without torch: a graph read from the cache (exported and checked by an earlier run) runs on ONNX
Runtime with numpy in and out (`Forward.numpy`, `numpy_layer`), and nothing here imports torch on
that path: the cache key and the thread count come from hardware.torch_version/default_threads.
torch is imported where a PyTorch net is built, exported, checked or run (issue 27 item 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.hardware import default_threads, torch_version

if TYPE_CHECKING:
    import torch
    from torch import nn

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
# Refusal bound on max |ONNX Runtime - PyTorch| over the check batch's outputs (logits or pooled
# features). Measured: 7.6e-06 on Lite0's logits (fp32 both sides, different kernel orders); a
# graph that differs by 1e-3 computes something else (a wrong op), not rounding.
MAX_ABS_DIFF = 1e-3
OPSET = 17  # supported by the TorchScript exporter of torch 2.14 and by ONNX Runtime >= 1.12
EXPORT_BATCH = 2
VERIFY_BATCH = 3  # != EXPORT_BATCH: a batch axis frozen at export fails the check
GRAPH, RECORD, HEAD = "model.onnx", "verify.json", "head.npz"


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
    # ONNX Runtime only: the same pass with numpy in and out, x a float32 (N, 3, H, W) C-order
    # array -> logits (N, classes) float32; None for PyTorch. Needs no torch.
    numpy: Callable[[Any], Any] | None = None
    # Set when the graph also outputs the CAM layer's activations and the head after it is
    # global average pooling + one Linear layer (models/linear_head.py): run_layer(x) returns
    # (logits, activations (N, C, h, w) float32 numpy), and Grad-CAM needs only `head`'s weights.
    layer: str | None = None
    head: Any = None  # models.linear_head.LinearHead
    run_layer: Callable[[torch.Tensor], tuple[torch.Tensor, Any]] | None = None
    numpy_layer: Callable[[Any], tuple[Any, Any]] | None = None  # run_layer, numpy in and out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def torch_forward(model: nn.Module, device: torch.device, channels_last: bool = True,
                  about: dict[str, Any] | None = None) -> Forward:
    """PyTorch eager fp32, as cnnlab has always run it (NHWC on request: faster convolutions)."""
    import torch

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(device=device, memory_format=memory_format)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.inference_mode():
            return model(x).float()

    return Forward("torch", run, {"engine": "torch", **(about or {})})


def graph_dir(identity: str, input_size: int, root: Path | None = None,
              layer: str | None = None) -> Path:
    """The cache folder of one exported graph (its key: identity, input size, opset, torch, and
    the layer whose activations it also outputs, if any: a graph asked for with a layer is never
    one exported without its second output)."""
    from cnnlab.models.cache import cache_root

    spec = {"identity": identity, "input_size": input_size, "opset": OPSET,
            "torch": torch_version(), "exporter": "torchscript"}
    if layer is not None:
        spec["layer"] = layer
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return (root or cache_root()) / "onnx" / key[:32]


def check_batch(input_size: int, n: int = VERIFY_BATCH) -> torch.Tensor:
    """The fixed batch both engines run at export: normalised-image-like N(0, 1) values, seeded."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, input_size, input_size, generator=g)


def _with_layer(model: nn.Module, layer: str) -> nn.Module:
    """`model` returning (logits, the output of `layer`): the graph's two outputs y and a. (The
    class is defined here, not at module level: nn.Module would import torch with the module.)"""
    from torch import nn

    class WithLayer(nn.Module):
        def __init__(self, model: nn.Module, layer: str):
            super().__init__()
            self.model, self.layer = model, layer

        def forward(self, x):
            captured: list = []
            handle = self.model.get_submodule(self.layer).register_forward_hook(
                lambda _m, _i, out: captured.append(out))
            try:
                y = self.model(x)
            finally:
                handle.remove()
            return y, captured[-1]

    return WithLayer(model, layer)


def export_graph(model: nn.Module, target: Path, input_size: int,
                 layer: str | None = None) -> None:
    """torch.onnx.export of the eval-mode CPU net into `target`, atomically (temp + rename in
    the same folder: a concurrent run or a crash never leaves a torn graph). With `layer`, the
    graph has a second output, a: that layer's activations (N, C, h, w)."""
    import warnings

    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # the exporter's notes on the TorchScript path
            warnings.simplefilter("ignore")
            outputs = ["y"] if layer is None else ["y", "a"]
            torch.onnx.export(model if layer is None else _with_layer(model, layer),
                              (check_batch(input_size, EXPORT_BATCH),), tmp,
                              dynamo=False, input_names=["x"], output_names=outputs,
                              dynamic_axes={n: {0: "batch"} for n in ["x", *outputs]},
                              opset_version=OPSET, do_constant_folding=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The threads torch would use (hardware.default_threads: OMP_NUM_THREADS, --threads), so the
    # engines compare like for like; inter-op 1: one graph, one request at a time.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Threads sleep when idle instead of spinning: the decoding workers share the same cores,
    # and a spinning pool takes their time. Measured (BENCHMARKS.md "Against the lab's
    # pipeline", 2026-12-07, 2 cores, under load): evaluate of 100 photos 6.1 -> 5.0-5.3 CPU-s
    # and faster wall time. The arena stays on (off: -160 MB, +0.4 CPU-s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are not the user's to act on
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_run(session) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        import torch

        # ONNX Runtime reads NCHW float32 memory: a channels-last batch is copied back to NCHW.
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(["y"], {"x": array})[0])
    return run


def max_abs_diff(model: nn.Module, session, input_size: int) -> float | None:
    """max |ONNX Runtime - PyTorch| over the check batch's outputs; None when the shapes differ
    or a value is not finite (JSON has no inf or NaN; either is a refusal)."""
    import math

    import torch

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
    from torch import nn

    return model if isinstance(model, nn.Module) else model()


def _ort_numpy(session, outputs: list[str]) -> Callable[[Any], Any]:
    """session.run of a numpy batch (float32, NCHW, C-order: what the numpy collate stacks):
    its one output, or the tuple of them. The same bytes as `_ort_run`'s, without torch."""
    def run(x):
        got = session.run(outputs, {"x": x})
        return got[0] if len(outputs) == 1 else tuple(got)
    return run


def _ort_run_layer(session) -> Callable[[torch.Tensor], tuple[torch.Tensor, Any]]:
    def run(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        import torch

        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        y, a = session.run(["y", "a"], {"x": array})
        return torch.from_numpy(y), a
    return run


def layer_abs_diff(model: nn.Module, layer: str, session, input_size: int) -> float | None:
    """max |ONNX Runtime - PyTorch| over the check batch's activations of `layer` (output a)."""
    import math

    import torch

    x = check_batch(input_size)
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().float().clone()))
    try:
        with torch.inference_mode():
            model.eval().cpu()(x)
    finally:
        handle.remove()
    _, got = _ort_run_layer(session)(x)
    if not captured or tuple(got.shape) != tuple(captured[-1].shape):
        return None
    diff = float((torch.from_numpy(got) - captured[-1]).abs().max())
    return diff if math.isfinite(diff) else None


def _export_checked(model: nn.Module, folder: Path, identity: str, input_size: int,
                    threads: int, layer: str | None):
    """Export `model` into `folder` and check it against PyTorch: (session, record). With
    `layer`, the layer's activations become a second output when the head after it is linear
    (models/linear_head.py: its weights saved as head.npz) and they, too, are checked."""
    import numpy as np

    from cnnlab.models.linear_head import linear_head
    from cnnlab.runs import atomic_write_bytes

    head = linear_head(model, layer, check_batch(input_size)) if layer else None
    export_graph(model.eval().cpu(), folder / GRAPH, input_size,
                 layer if head is not None else None)
    session = ort_session(folder / GRAPH, threads)
    record: dict[str, Any] = {
        "identity": identity, "input_size": input_size, "opset": OPSET,
        "torch": torch_version(), "check_batch": VERIFY_BATCH,
        "max_abs_diff": max_abs_diff(model, session, input_size),
        "layer": layer, "linear_head": head is not None}
    if head is not None:
        record["layer_max_abs_diff"] = layer_abs_diff(model, layer, session, input_size)
        buf = io.BytesIO()
        np.savez(buf, weight=head.weight, bias=head.bias)
        atomic_write_bytes(folder / HEAD, buf.getvalue())
    return session, record


def _cached_head(folder: Path, record: dict[str, Any]):
    """The LinearHead saved at export when the record says the graph has a checked second
    output (its activations within MAX_ABS_DIFF of PyTorch's); else None (maps via PyTorch)."""
    import numpy as np

    from cnnlab.models.linear_head import LinearHead

    diff = record.get("layer_max_abs_diff")
    if not record.get("linear_head") or diff is None or diff > MAX_ABS_DIFF:
        return None
    try:
        with np.load(folder / HEAD) as saved:
            return LinearHead(saved["weight"], saved["bias"])
    except (OSError, ValueError, KeyError):
        return None


def onnx_forward(model: nn.Module | Callable[[], nn.Module], identity: str, input_size: int,
                 threads: int, root: Path | None = None, layer: str | None = None
                 ) -> tuple[Forward | None, dict[str, Any], str]:
    """The ONNX Runtime forward of `model` (exported and checked once, then read from the
    cache), or None and the reason it was refused. Returns (forward, about, reason).
    `model` may be a function that builds the net: called only when the graph is exported.
    `layer`: the CAM layer whose activations the graph also outputs when the head after it is
    linear (Forward.run_layer, Forward.head)."""
    from cnnlab.runs import atomic_write_text

    folder = graph_dir(identity, input_size, root, layer)
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
            folder.mkdir(parents=True, exist_ok=True)
            session, record = _export_checked(_built(model), folder, identity, input_size,
                                              threads, layer)
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
    forward = Forward("onnxruntime", _ort_run(session), about, numpy=_ort_numpy(session, ["y"]))
    head = _cached_head(folder, record) if layer else None
    if head is not None:
        about["layer"], about["layer_max_abs_diff"] = layer, record["layer_max_abs_diff"]
        forward.layer, forward.head, forward.run_layer = layer, head, _ort_run_layer(session)
        forward.numpy_layer = _ort_numpy(session, ["y", "a"])
    return forward, about, ""


def _device_type(device) -> str:
    """"cpu" / "cuda" of a torch.device, a hardware.CpuDevice or a string ("cuda:1")."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def resolve_engine(requested: str, device: torch.device) -> str:
    """The engine `requested` means here: auto is ONNX Runtime on the CPU when installed (it
    measured faster, module docstring), PyTorch on a GPU (ONNX Runtime's CUDA provider is not
    installed with it)."""
    check_engine(requested)
    if requested == "auto":
        usable = _device_type(device) == "cpu" and onnxruntime_version() is not None
        return "onnxruntime" if usable else "torch"
    if requested in ("onnxruntime", "openvino") and onnxruntime_version() is None:
        raise CnnlabError(f"--engine {requested}: onnxruntime is not installed "
                          "(pip install onnxruntime), or use --engine torch")
    if requested == "openvino":  # optional: models/openvino_engine.py
        from cnnlab.models.openvino_engine import require_openvino

        require_openvino()
    return requested


def prepare_forward(model: nn.Module | Callable[[], nn.Module], requested: str, *,
                    identity: str, input_size: int,
                    device: torch.device | str = "cpu", channels_last: bool = True,
                    log: Callable[[str], Any] | None = None, root: Path | None = None,
                    label: str = "", layer: str | None = None) -> Forward:
    """The forward pass of `model` on the engine `requested` (auto, torch, onnxruntime).

    model: the net, or a function that builds it, called only when PyTorch runs the pass or the
    graph is exported: scoring on a cached graph then imports neither the net's library (timm,
    torchvision) nor loads its weights into PyTorch (~2.5 CPU-s, BENCHMARKS.md "Start-up").

    identity: names the weights (model name + weights digest): the exported graph's cache key
    with input_size. An ONNX graph that cannot be exported or loaded, or whose outputs differ
    from PyTorch's by more than MAX_ABS_DIFF, is refused: the pass runs in PyTorch and `log`
    gets one line saying why. `forward.about` says which engine ran and what the check found.

    layer: the net's CAM layer (the registry's cam_layer), or None. On ONNX Runtime, when only
    global average pooling and a Linear layer follow it, the graph also outputs its activations
    (checked against PyTorch's too) and `forward.run_layer` / `forward.head` draw Grad-CAM maps
    with no PyTorch model (analysis/linear_cams.py).

    On ONNX Runtime with the graph cached, nothing here imports torch (`forward.numpy`)."""
    engine = resolve_engine(requested, device)
    if engine in ("onnxruntime", "openvino") and _device_type(device) != "cpu":
        if log is not None:
            log(f"{label or identity}: {engine} runs on the CPU here; PyTorch runs on {device}")
        engine = "torch"
    if engine == "torch":
        return torch_forward(_built(model), _torch_device(device), channels_last,
                             {"requested": requested})
    forward, about, reason = onnx_forward(model, identity, input_size,
                                          default_threads(), root, layer)
    if forward is None:
        if log is not None:
            log(f"{label or identity}: ONNX graph refused ({reason}); running PyTorch instead")
        return torch_forward(_built(model), _torch_device(device), channels_last,
                             {"requested": requested, "refused": {**about, "reason": reason}})
    forward.about["requested"] = requested
    if engine == "openvino":  # the same checked graph, run by OpenVINO (openvino_engine.py)
        forward = _on_openvino(forward, input_size, default_threads(), log,
                               label or identity)
    return forward


def pass_context(forwards: list[Forward], numpy_pass: bool):
    """What a scoring pass runs in: nothing for a numpy pass (every forward on ONNX Runtime,
    `Forward.numpy`: no torch); else inference mode and `one_torch_thread_unless_torch`."""
    if numpy_pass:
        return contextlib.nullcontext()
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(one_torch_thread_unless_torch(forwards))
    return stack


def _torch_device(device) -> torch.device:
    import torch

    return torch.device(device)


def _on_openvino(ort: Forward, input_size: int, threads: int,
                 log: Callable[[str], Any] | None, label: str) -> Forward:
    """`ort`'s graph on OpenVINO when its logits on the check batch stay within MAX_ABS_DIFF of
    PyTorch's (ONNX Runtime's recorded difference + OpenVINO's from ONNX Runtime); else `ort`
    itself, and `log` gets one line saying why."""
    import torch

    from cnnlab.models.openvino_engine import checked_runners

    x = check_batch(input_size)
    bound = MAX_ABS_DIFF - ort.about["max_abs_diff"]
    run_y, run_ya, about, reason = checked_runners(
        Path(ort.about["graph"]), threads, ort.run_layer is not None, x.numpy(),
        ort(x).numpy(), bound)
    if run_y is None:
        if log is not None:
            log(f"{label}: OpenVINO refused ({reason}); running ONNX Runtime instead")
        ort.about["openvino_refused"] = {**about, "reason": reason}
        return ort
    forward = Forward("openvino", lambda b: torch.from_numpy(run_y(_array(b))[0]),
                      {**ort.about, **about, "engine": "openvino"}, layer=ort.layer, head=ort.head)
    # numpy in and out as well, so that a pass on OpenVINO decodes with numpy like ONNX Runtime's
    forward.numpy = lambda b: run_y(b)[0]
    if run_ya is not None:
        def run_layer(b: torch.Tensor) -> tuple[torch.Tensor, Any]:
            y, a = run_ya(_array(b))
            return torch.from_numpy(y), a
        forward.run_layer = run_layer
        forward.numpy_layer = run_ya
    return forward


def _array(x: torch.Tensor):
    """A float32 NCHW numpy view of a batch on the CPU (a channels-last one copied to NCHW)."""
    import torch

    return x.detach().to("cpu", torch.float32).contiguous().numpy()


@contextlib.contextmanager
def one_torch_thread_unless_torch(forwards: list[Forward]):
    """One torch thread while none of `forwards` runs in PyTorch: what is left to torch then
    (stacking a batch when decoding in this process, softmax and top-k of 8 x 1000 logits) is
    too small to share, and torch's intra-op threads made it far slower on a busy 2-core machine
    (measured under load: top-k of a batch 7.9 ms with 2 threads, 0.03 ms with 1; stacking 8
    photos 90 ms against 0.7 ms). ONNX Runtime keeps its own threads (set when its session was
    made)."""
    if any(f.engine == "torch" for f in forwards):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
