"""hardware.py: one device chooser, one precision resolver, and what environment.json says about
the CPU; CNNLAB_PRECISION=fp32 reaching real runs (train, charrnn) and the lab's steps."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import hardware
from cnnlab.errors import CnnlabError

FP32_ONLY = frozenset({"fpu", "avx2", "avx512f"})  # a Xeon with AVX-512 but no bf16
AVX512_BF16 = FP32_ONLY | {"avx512_bf16"}  # e.g. Cooper Lake, Zen 4
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}  # Sapphire Rapids


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert hardware.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert hardware.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("flags, expected", [
    (FP32_ONLY, ("fp32", "auto: no native bf16 on the CPU (no avx512_bf16/amx_bf16)")),
    (AVX512_BF16, ("bf16", "auto: native bf16 on the CPU (avx512_bf16)")),
    (AMX, ("bf16", "auto: native bf16 on the CPU (avx512_bf16, amx_bf16)")),
])
def test_auto_precision_follows_the_cpus_bf16_flags(flags, expected):
    assert hardware.resolve_precision("auto", "cpu", env={}, flags=flags) == expected


def test_explicit_precision_and_the_environment_variable():
    assert hardware.resolve_precision("bf16", "cpu", env={}, flags=FP32_ONLY) == (
        "bf16", "--precision bf16")
    assert hardware.resolve_precision("fp32", "cpu", env={}, flags=AMX,
                                      source="recipe lab-simple-cnn:") == (
        "fp32", "recipe lab-simple-cnn: fp32")
    forced = {"CNNLAB_PRECISION": "fp32"}
    # fp32 forced wins over auto on an AMX CPU, over an explicit bf16, and on a bf16 GPU.
    for requested in ("auto", "bf16", "fp32"):
        assert hardware.resolve_precision(requested, "cpu", env=forced, flags=AMX) == (
            "fp32", "CNNLAB_PRECISION=fp32")
    assert hardware.resolve_precision("auto", "cuda", env=forced, cuda_bf16=True)[0] == "fp32"
    # "auto" (what `cnnlab lab --precision auto` sets) leaves each command its own choice.
    assert hardware.resolve_precision("auto", "cpu", env={"CNNLAB_PRECISION": "auto"},
                                      flags=AMX)[0] == "bf16"
    assert hardware.resolve_precision("auto", "cuda", env={}, cuda_bf16=False) == (
        "fp32", "auto: the GPU has no bf16")
    with pytest.raises(CnnlabError, match="CNNLAB_PRECISION must be fp32 or auto, not 'fp16'"):
        hardware.resolve_precision("auto", "cpu", env={"CNNLAB_PRECISION": "fp16"})
    with pytest.raises(CnnlabError, match="--precision must be"):
        hardware.resolve_precision("half", "cpu", env={})


def test_autocast_computes_in_bf16_only_when_asked():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with hardware.autocast("bf16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with hardware.autocast("fp32", "cpu"):
        assert torch.equal(a @ b, torch.mm(a, b))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error():
    assert hardware.choose_device("auto") == torch.device("cpu")
    with pytest.raises(CnnlabError, match="--device cuda: no CUDA GPU"):
        hardware.choose_device("cuda")
    # predict used to run on the CPU without a word; now it is exit 2 and one line.
    photo = Path(__file__).parents[1] / "../shared/data/imagenet-samples/n01440764_tench.JPEG"
    if not photo.is_file():
        pytest.skip("no shared imagenet-samples here")
    out = subprocess.run([sys.executable, "-m", "cnnlab", "predict", "efficientnet_lite0",
                          str(photo), "--device", "cuda", "-q"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "cnnlab predict: error: --device cuda: no CUDA GPU is available here "
        "(use --device cpu or auto)"]


def test_environment_records_the_cpu(tmp_path):
    from cnnlab.runs import environment

    env = environment()
    flags = hardware.cpu_flags()
    assert env["cpu_flags"] == [f for f in hardware.SPEED_FLAGS if f in flags]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    m = re.search(r"^Model name:\s*(.+)$", lscpu, flags=re.M)
    if m:
        assert env["cpu_model"] == m.group(1).strip()
    assert env["cpu_model"]


def _cnnlab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


def test_forced_fp32_reaches_a_train_run(shared_data, tmp_path):
    """--precision bf16 asked for, CNNLAB_PRECISION=fp32 in the environment: the run is fp32 and
    says why (environment.json and results.json)."""
    data = shared_data("cifar10", "cifar10-jpg.zip")
    out = tmp_path / "train"
    r = _cnnlab("train", str(data), "-m", "simple-cnn", "--recipe", "lab", "--epochs", "1",
                "--limit-per-class", "10", "--precision", "bf16", "--threads", "1",
                "--no-report", "--out", str(out), "-q",
                env={"CNNLAB_PRECISION": "fp32", "CNNLAB_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    env = json.loads((out / "simple-cnn-seed0" / "environment.json").read_text())
    assert (env["precision"], env["precision_reason"]) == ("fp32", "CNNLAB_PRECISION=fp32")
    assert "cpu_model" in env and "cpu_flags" in env
    results = json.loads((out / "simple-cnn-seed0" / "results.json").read_text())
    assert results["precision"] == "fp32"


def test_forced_fp32_reaches_a_charrnn_run(tmp_path):
    words = ["hello", "green", "start", "end", "tree"]
    for forced, reason in (("fp32", "CNNLAB_PRECISION=fp32"), ("", "charrnn trains in fp32")):
        out = tmp_path / f"char-{forced or 'default'}"
        r = _cnnlab("charrnn", "train", "--words", *words, "--epochs", "2", "--hidden", "8",
                    "--threads", "1", "--out", str(out), "-q", env={"CNNLAB_PRECISION": forced})
        assert r.returncode == 0, r.stderr
        env = json.loads((out / "environment.json").read_text())
        assert (env["precision"], env["precision_reason"]) == ("fp32", reason)


def test_lab_precision_sets_the_variable_for_its_steps_only(tmp_path, monkeypatch):
    from cnnlab.progress import Reporter
    from cnnlab.tasks import lab

    monkeypatch.delenv("CNNLAB_PRECISION", raising=False)
    seen = []

    def step(config, run_dir, reporter):  # what a step (or a worker it starts) sees
        seen.append((os.environ.get("CNNLAB_PRECISION"),
                     hardware.resolve_precision("auto", "cpu", flags=AMX)))
        return {}

    plan = lab.Plan(task=step, config={"x": 1}, command="cnnlab step")
    monkeypatch.setattr(lab, "STEPS", [lab.Step("concepts", "a step", lambda c: plan)])
    hashes = []
    for precision in ("fp32", "auto"):
        run_dir = lab.open_lab_dir(tmp_path / precision)
        state = lab.run(lab.LabConfig(precision=precision, report=False), run_dir,
                        Reporter(quiet=True))
        hashes.append(state["steps"]["concepts"]["hash"])
        assert state["steps"]["concepts"]["status"] == "done"
        env = json.loads((run_dir.path / "environment.json").read_text())
        assert env["CNNLAB_PRECISION"] == precision
    assert seen == [("fp32", ("fp32", "CNNLAB_PRECISION=fp32")),
                    ("auto", ("bf16", "auto: native bf16 on the CPU (avx512_bf16, amx_bf16)"))]
    assert "CNNLAB_PRECISION" not in os.environ  # restored after the lab
    assert hashes[0] != hashes[1]  # a result taken in forced fp32 is not reused for auto
    with pytest.raises(CnnlabError, match="--precision must be fp32 or auto"):
        lab.LabConfig(precision="bf16")


def test_lab_appendix_shows_the_cpu_and_each_steps_precision(tmp_path):
    from cnnlab.report.blocks import environment_rows
    from cnnlab.report.lab import step_precisions

    (tmp_path / "train" / "simple-cnn-seed0").mkdir(parents=True)
    (tmp_path / "train" / "simple-cnn-seed0" / "environment.json").write_text(json.dumps(
        {"precision": "fp32", "precision_reason": "CNNLAB_PRECISION=fp32"}))
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "environment.json").write_text(json.dumps({"device": "cpu"}))
    state = {"steps": {"evaluate": {"run_dir": "evaluate"}, "train": {"run_dir": "train"}}}
    assert step_precisions(tmp_path, state) == "train: fp32 (CNNLAB_PRECISION=fp32)"
    rows = environment_rows({"platform": "Linux", "cpu_count": 2, "cpu_model": "Xeon",
                             "cpu_flags": ["avx2", "amx_bf16"], "precision": "train: fp32"})
    assert list(rows)[:3] == ["cpu_model", "cpu_flags", "precision"]
    assert rows["cpu_flags"] == "avx2 amx_bf16"


# A fresh process that answers hardware's torch-free questions, then whether torch got imported,
# then torch's own answers to the same questions.
TORCH_FREE = """
import json, sys
from cnnlab import hardware
device = hardware.choose_device("auto")
free = {"device": str(device), "type": device.type, "torch_version": hardware.torch_version(),
        "threads": hardware.default_threads(), "capability": hardware.cpu_capability(),
        "torch_loaded": "torch" in sys.modules}
import torch
x = torch.ones(2).to(device)
print(json.dumps({"free": free, "torch": {
    "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    "torch_version": torch.__version__, "threads": torch.get_num_threads(),
    "capability": torch.backends.cpu.get_cpu_capability()},
    "tensor_device": str(x.device), "as_torch_device": str(torch.device(device))}))
"""


@pytest.mark.parametrize("env", [{}, {"OMP_NUM_THREADS": "1"}, {"ATEN_CPU_CAPABILITY": "avx2"}])
def test_torch_free_answers_equal_torchs(env):
    """Without importing torch (issue 27 item 4), hardware answers what torch would: the CPU
    for --device auto where CUDA cannot work, torch.__version__ (local part included: the ONNX
    cache keys hold it), torch.get_num_threads() and the CPU capability; the CpuDevice it
    returns then works as a device for torch."""
    if hardware.cuda_possible():
        pytest.skip("an NVIDIA driver is present: auto asks torch here")
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    free = out["free"]
    assert free.pop("torch_loaded") is False
    assert free.pop("type") == "cpu"
    assert free == out["torch"]
    assert out["tensor_device"] == out["as_torch_device"] == "cpu"


def test_cuda_possible_reads_the_nvidia_driver(tmp_path):
    missing = tmp_path / "missing"
    assert hardware.cuda_possible(missing, missing) is (not sys.platform.startswith("linux"))
    assert hardware.cuda_possible(tmp_path, missing) is True
    assert hardware.cuda_possible(missing, tmp_path) is True  # WSL 2: /dev/dxg, no driver file


def test_choose_device_is_torchs_once_torch_is_loaded():
    """In a process that has torch (every command that runs PyTorch), today's torch.device."""
    assert isinstance(hardware.choose_device("auto"), torch.device)
    assert isinstance(hardware.choose_device("cpu"), torch.device)


def test_cpu_device_stands_in_for_torch_device_cpu():
    """Where torch is not loaded, choose_device's CPU is a CpuDevice: it must work wherever the
    tasks use a torch.device("cpu") (type, index, equality, torch's own calls, pickling into
    DataLoader workers)."""
    import pickle

    d = hardware.CpuDevice()
    assert (d.type, d.index, str(d)) == ("cpu", None, "cpu")
    assert d == torch.device("cpu") and torch.device("cpu") == d and d == "cpu"
    assert d != torch.device("meta") and d != "cuda"
    assert torch.device(d) == torch.device("cpu")
    assert torch.zeros(2).to(d).device == torch.zeros(2, device=d).device == torch.device("cpu")
    copy = pickle.loads(pickle.dumps(d))
    assert type(copy) is hardware.CpuDevice and copy == d
