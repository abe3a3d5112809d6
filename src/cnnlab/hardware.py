"""What this machine is and what to run on it: the device, the CPU, the precision.

    device = choose_device("auto")                    # cuda where there is one, else cpu
    precision, why = resolve_precision("auto", device)  # ("bf16" | "fp32", the fact it rests on)
    with autocast(precision, device): ...

One place decides each of these, for every command. The module sits at the very bottom of the
layers, beside `errors` (it imports nothing else of cnnlab), so that `dist` (a rank's device)
and `runs` (environment.json) can use it as well as the tasks and the engine.

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
from collections.abc import Mapping
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError

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


def choose_device(requested: str = "auto", index: int | None = None) -> torch.device:
    """The device for `--device auto|cpu|cuda`: auto is CUDA where available, else the CPU.
    `index`: the GPU of this rank (torchrun's LOCAL_RANK); None leaves it to CUDA's current one.
    Asking for cuda where there is none is an error, not a silent (and ~50x slower) CPU run."""
    if requested not in DEVICES:
        raise CnnlabError(f"--device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


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
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


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
    if torch.device(device).type == "cuda":
        native = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return ("bf16", "auto: the GPU supports bf16") if native else (
            "fp32", "auto: the GPU has no bf16")
    present = [f for f in BF16_FLAGS if f in (cpu_flags() if flags is None else flags)]
    if present:
        return "bf16", f"auto: native bf16 on the CPU ({', '.join(present)})"
    return "fp32", "auto: no native bf16 on the CPU (no avx512_bf16/amx_bf16)"


def autocast(precision: str, device: torch.device | str):
    """The context a step runs in: bf16 autocast of matmuls and convolutions, or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
