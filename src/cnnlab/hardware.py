"""What this machine is and what to run on it: the device, the CPU, the precision.

    device = choose_device("auto")                    # cuda where there is one, else cpu
    precision, why = resolve_precision("auto", device)  # ("bf16" | "fp32", the fact it rests on)
    with autocast(precision, device): ...

One place decides each of these, for every command. torch is imported only where an answer
needs it (issue 27 item 4: `import torch` alone is ~1.8 s and ~645 MB of RSS for the CUDA build
here): a command that runs no PyTorch (evaluate on ONNX Runtime) learns "cpu", the thread count
and the torch version without it, and gets the same answers torch would give.

The module sits at the very bottom of the layers, beside `errors` (it imports nothing else of
cnnlab), so that `dist` (a rank's device) and `runs` (environment.json) can use it as well as
the tasks and the engine.

Precision. bf16 autocast pays only where the hardware does bf16 arithmetic natively: a CUDA GPU
with bf16, or a CPU with AVX512-BF16 or AMX-BF16 (without them oneDNN emulates bf16 and is
slower than fp32; BENCHMARKS.md). `CNNLAB_PRECISION=fp32` in the environment overrides
every command's `--precision` and recipe, so that a whole run, the lab's steps and
their worker processes included, can be timed in fp32 on a machine that has bf16.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "CNNLAB_PRECISION"
# The CPU flags that decide how fast cnnlab trains (as /proc/cpuinfo spells them): AVX2 and
# AVX-512 for fp32 kernels; AVX512-BF16 and AMX-BF16 for native bf16 matmuls and convolutions
# (AMX also int8); avx512_fp16 for half-precision ones.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
               "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
# Present exactly when the NVIDIA kernel driver is loaded (Linux): without it CUDA cannot work,
# so torch.cuda.is_available() is False and "auto" means the CPU without asking torch.
NVIDIA_DRIVER = Path("/proc/driver/nvidia")
# WSL 2 reaches the Windows host's GPU through this device, with no /proc/driver/nvidia
# (NVIDIA's "CUDA on WSL" guide): where it exists, torch decides.
WSL_GPU = Path("/dev/dxg")


class CpuDevice(str):
    """The CPU as a device, named without importing torch: what `choose_device` returns for the
    CPU while torch is not loaded. It is the string "cpu" (torch accepts it wherever it takes a
    device: `torch.device(d)`, `x.to(d)`) with torch.device's `.type`."""

    type = "cpu"
    index = None  # torch.device("cpu").index

    def __new__(cls, _name: str = "cpu") -> CpuDevice:  # the argument: pickle's copy
        return super().__new__(cls, "cpu")

    def __eq__(self, other: object) -> bool:
        """Equal to "cpu" and to torch.device("cpu"), as torch.device("cpu") is to itself."""
        if isinstance(other, str):
            return str.__eq__(self, other)
        return getattr(other, "type", None) == "cpu" and getattr(other, "index", None) is None

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__


def torch_loaded() -> bool:
    """Whether this process has imported torch already (then asking it costs nothing)."""
    return "torch" in sys.modules


def cuda_possible(driver: Path = NVIDIA_DRIVER, wsl_gpu: Path = WSL_GPU) -> bool:
    """False when CUDA surely cannot work here (Linux without the NVIDIA driver, and not WSL 2
    with its GPU device), so that the CPU can be chosen without importing torch; True otherwise
    (torch decides)."""
    return not sys.platform.startswith("linux") or driver.exists() or wsl_gpu.exists()


def choose_device(requested: str = "auto", index: int | None = None
                  ) -> torch.device | CpuDevice:
    """The device for `--device auto|cpu|cuda`: auto is CUDA where available, else the CPU.
    `index`: the GPU of this rank (torchrun's LOCAL_RANK); None leaves it to CUDA's current one.
    Asking for cuda where there is none is an error, not a silent (and ~50x slower) CPU run.

    While torch is not loaded, the CPU (asked for, or "auto" where `cuda_possible` is False) is
    a `CpuDevice` and torch stays unimported; otherwise torch answers, a torch.device."""
    if requested not in DEVICES:
        raise CnnlabError(f"--device must be auto, cpu or cuda, not {requested!r}")
    if not torch_loaded() and (requested == "cpu"
                               or (requested == "auto" and not cuda_possible())):
        return CpuDevice()
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def torch_version() -> str | None:
    """torch.__version__ (e.g. "2.14.1+cu130", the local part included, as the ONNX cache keys
    and environment.json have always recorded it), read from torch/version.py while torch is
    not loaded; the distribution's version ("2.14.1") where that file cannot be read; None when
    torch is not installed."""
    import importlib.metadata
    import re

    if torch_loaded():
        import torch

        return torch.__version__
    try:  # the installed files, found through the distribution's metadata (no import)
        dist = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        text = Path(str(dist.locate_file("torch/version.py"))).read_text(encoding="utf-8")
        m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, flags=re.M)
        if m:
            return m.group(1)
    except OSError:
        pass
    return dist.version


def default_threads(env: Mapping[str, str] | None = None) -> int:
    """torch.get_num_threads() (the intra-op threads of torch and of ONNX Runtime's sessions),
    without importing torch while it is not loaded: torch's default is OMP_NUM_THREADS when
    that is a positive integer, else the CPUs this process may run on (its OpenMP runtime counts
    the affinity mask: `taskset -c 0` gives 1). Once torch is loaded, its own answer (which
    `torch.set_num_threads` or --threads may have changed)."""
    if torch_loaded():
        import torch

        return torch.get_num_threads()
    value = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return frozenset(f for line in re.findall(r"^flags\s*:(.*)$", text, flags=re.M)
                     for f in line.split())


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's marketing name: lscpu's "Model name", else /proc/cpuinfo's, else platform's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, flags=re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_info() -> dict[str, object]:
    """What environment.json records about the CPU: its model, the speed flags it has
    (SPEED_FLAGS, those present) and the vector ISA torch's own kernels were dispatched to."""
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
        "cpu_capability": cpu_capability(flags),
    }


# ATen's CPU dispatch (aten/src/ATen/native/DispatchStub.cpp, x86): AVX512 needs avx512f, bw, vl,
# dq (and fma); AVX2 needs avx2 and fma; ATEN_CPU_CAPABILITY lowers the choice.
_CAPABILITY_FLAGS = {"AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"),
                     "AVX2": ("avx2", "fma")}


def cpu_capability(flags: frozenset[str] | None = None) -> str:
    """The vector ISA torch's own kernels dispatch to: torch's answer once it is loaded, else
    ATen's rule applied to the CPU's flags (x86; "DEFAULT" elsewhere)."""
    if torch_loaded():
        import torch

        return torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags() if flags is None else flags
    ranked = ["DEFAULT", *reversed(_CAPABILITY_FLAGS)]  # DEFAULT < AVX2 < AVX512
    best = next((name for name, needed in _CAPABILITY_FLAGS.items()
                 if all(f in flags for f in needed)), "DEFAULT")
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().upper()
    if forced in ranked:
        return min(best, forced, key=ranked.index)
    return best


def forced_precision(env: Mapping[str, str] | None = None) -> str | None:
    """"fp32" when CNNLAB_PRECISION=fp32 is in `env` (default os.environ); None when it is unset,
    empty or "auto" (each command's own --precision then)."""
    value = (os.environ if env is None else env).get(PRECISION_ENV, "").strip()
    if value not in ("", "auto", "fp32"):
        raise CnnlabError(f"{PRECISION_ENV} must be fp32 or auto, not {value!r}")
    return value if value == "fp32" else None


def resolve_precision(requested: str, device: torch.device | str = "cpu", *,
                      source: str = "--precision", env: Mapping[str, str] | None = None,
                      flags: frozenset[str] | None = None, cuda_bf16: bool | None = None
                      ) -> tuple[str, str]:
    """("fp32" | "bf16", why) for a command's `requested` precision (auto, fp32 or bf16).

    CNNLAB_PRECISION=fp32 in `env` (default os.environ) wins over everything; then an explicit
    fp32/bf16, explained as `f"{source} {requested}"` (a recipe passes its own name); then auto:
    bf16 where the device does it natively. `flags` (the CPU's, default /proc/cpuinfo) and
    `cuda_bf16` (default: torch's answer) are for tests."""
    forced = forced_precision(env)
    if forced is not None:
        return forced, f"{PRECISION_ENV}={forced}"
    if requested not in PRECISIONS:
        raise CnnlabError(f"--precision must be auto, fp32 or bf16, not {requested!r}")
    if requested != "auto":
        return requested, f"{source} {requested}"
    if _device_type(device) == "cuda":
        import torch

        native = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return ("bf16", "auto: the GPU supports bf16") if native else (
            "fp32", "auto: the GPU has no bf16")
    present = [f for f in BF16_FLAGS if f in (cpu_flags() if flags is None else flags)]
    if present:
        return "bf16", f"auto: native bf16 on the CPU ({', '.join(present)})"
    return "fp32", "auto: no native bf16 on the CPU (no avx512_bf16/amx_bf16)"


def _device_type(device) -> str:
    """"cpu" or "cuda" of a torch.device, a CpuDevice or a device string ("cuda:1")."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def autocast(precision: str, device: torch.device | str):
    """The context a step runs in: bf16 autocast of matmuls and convolutions, or nothing."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
