"""Run directories: everything a command produced, written so that nothing is lost or mixed up.

A run directory holds
    config.json       the resolved configuration (every default filled in)
    environment.json  Python / torch / torchvision / timm versions, git sha, device, threads, seed
    results.json      the command's results
    metrics.jsonl     one JSON object per line, appended during training
    events.out.tfevents.*.cnnlab
                      the same metrics for TensorBoard, where it is installed (`tracking.py`)
plus whatever files the command adds (tables, plots, reports, checkpoints).

Every file is written to a temporary name in the same directory and renamed into place
(`os.replace` is atomic on POSIX), so a crash leaves the previous version or the new one, never
half a file. A new run never reuses a directory that already holds files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.faults import crash_point
from cnnlab.tracking import EventLog

DEFAULT_ROOT = Path("runs")


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it...
    os.umask(mask)  # ...and put it back at once
    return mask


def _naming(exc: OSError, path: Path) -> OSError:
    """`exc` with `path` as its file: the OSError of a write (a full disk: ENOSPC) names no
    file, and a temporary file's name would only puzzle; the command line prints the path."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))  # PermissionError etc. by errno


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # its OSError names the folder it failed on
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        # mkstemp creates 0600; a results file should get the permissions open() would give.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure written atomically: a crash, or a savefig that raises, leaves the
    previous file whole (never half a PNG). The format is the file's ending unless given."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    # Rendered in memory, then written by the one atomic writer (temporary file, fsync,
    # rename, the permissions open() would give): a figure is a few hundred kB at most.
    buf = io.BytesIO()
    fig.savefig(buf, **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def git_sha(start: Path | None = None) -> str | None:
    """The commit of the cnnlab checkout, if it is one (None for an installed wheel)."""
    here = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(seed: int | None = None, device: str | None = None, **extra: Any
                ) -> dict[str, Any]:
    """What produced a run: enough to reproduce it or to explain a different number; the CPU's
    model and speed flags explain a timing (hardware.cpu_info). torch is not imported for it:
    a command that runs no PyTorch records what torch would say (hardware.torch_version,
    default_threads; no CUDA where the NVIDIA driver is absent)."""
    from cnnlab import hardware

    return {
        # From the installed metadata, not the package face: runs.py sits below everything the
        # face imports (DESIGN.md's layers). "unknown" when cnnlab runs from an uninstalled tree.
        "cnnlab": _installed_version("cnnlab") or "unknown",
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": hardware.torch_version(),
        # Read from the installed metadata: importing torchvision and timm only to learn their
        # versions would cost a command that does not use them seconds of start-up.
        "torchvision": _installed_version("torchvision"),
        "timm": _installed_version("timm"),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        **hardware.cpu_info(),  # cpu_model, cpu_flags, cpu_capability
        "torch_threads": hardware.default_threads(),
        "device": device or hardware.choose_device("auto").type,
        "cuda": _cuda_version(),
        "seed": seed,
        "argv": sys.argv,
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        **extra,  # what a command decided from the machine (e.g. precision and why)
    }


def _cuda_version() -> str | None:
    """torch.version.cuda where a CUDA GPU is available, else None (without importing torch
    where no GPU can be: hardware.cuda_possible)."""
    from cnnlab import hardware

    if not hardware.torch_loaded() and not hardware.cuda_possible():
        return None
    import torch

    return torch.version.cuda if torch.cuda.is_available() else None


def damaged(path: Path, problem: str) -> CnnlabError:
    """The one-line error for a run's file that cannot be trusted on --resume."""
    return CnnlabError(f"{path} is damaged: {problem}; it was edited by hand or is not this "
                       "run's, so the run cannot be resumed as it was")


def check_record(path: Path, record: Any, keys: dict[str, Any], what: str = "") -> dict[str, Any]:
    """`record` (read from `path`) if it is a mapping holding each of `keys` with its JSON
    type(s) (bool is not a number here); else `damaged`, naming the first key that is not."""
    if not isinstance(record, dict):
        raise damaged(path, f"{what or 'it'} holds no mapping")
    for key, types in keys.items():
        value = record.get(key)
        if key not in record or isinstance(value, bool) or not isinstance(value, types):
            found = f" ({value!r})" if key in record else ""
            raise damaged(path, f"{what + ' has ' if what else ''}no valid {key!r}{found}")
    return record


def _probe_writable(path: Path) -> None:
    """Raise the OSError that writing a file into `path` would, now rather than after minutes
    of work (an existing empty --out the user may not write to is the usual case)."""
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".cnnlab-probe.")
    os.close(fd)
    os.unlink(tmp)


def _cannot_create(path: Path, exc: OSError) -> CnnlabError:
    # mkdir names the parent it could not write in; the probe its temporary file: name the
    # folder that refused only when it is not the run directory itself.
    where = Path(exc.filename).parent if exc.filename and ".cnnlab-probe." in str(
        exc.filename) else exc.filename
    at = f" (in {where})" if where and str(where) != str(path) else ""
    return CnnlabError(f"cannot create the run directory {path}{at}: "
                       f"{exc.strerror or exc}; choose another --out")


class RunDir:
    """A directory holding one run's artifacts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # metrics.jsonl mirrored for TensorBoard: written where the metrics and results are
        self.events = EventLog(self.path, self.read_metrics, self._config_if_any)

    @classmethod
    def create(
        cls, command: str, out: str | Path | None = None, root: str | Path = DEFAULT_ROOT
    ) -> RunDir:
        """A fresh directory: `out` if given (it must not hold files), else
        `root/<command>/<YYYYmmdd-HHMMSS>` with a `-2`, `-3`, ... suffix if that exists."""
        if out is not None:
            path = Path(out)
            try:
                if path.exists() and (not path.is_dir() or any(path.iterdir())):
                    raise CnnlabError(
                        f"output directory {path} already holds files; choose another --out "
                        "(a run never overwrites another)"
                    )
                path.mkdir(parents=True, exist_ok=True)
                _probe_writable(path)
            except OSError as exc:
                raise _cannot_create(path, exc) from None
            return cls(path)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(root) / command / stamp
        for i in range(1, 1000):
            path = base if i == 1 else base.with_name(f"{stamp}-{i}")
            try:
                path.mkdir(parents=True, exist_ok=False)  # atomic claim: two runs never share
                _probe_writable(path)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _cannot_create(path, exc) from None
        raise CnnlabError(f"cannot create a run directory under {base.parent}")

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run (for --resume and for reports)."""
        path = Path(path)
        if not path.is_dir():
            raise CnnlabError(f"run directory not found: {path}")
        return cls(path)

    def remove_if_empty(self) -> None:
        """Undo `create` when a run failed before writing anything (a user error found late)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()  # only succeeds on an empty directory

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.file(name), obj)
        return self.file(name)

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.file(name), text)
        return self.file(name)

    def read_json(self, name: str) -> Any:
        """A JSON file of this run; a damaged one (cut short, edited by hand) is a one-line
        CnnlabError naming it, not a traceback, wherever it is met (--resume, a report)."""
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CnnlabError(f"{path} is damaged: not valid JSON ({exc}); it was cut short "
                              "or edited by hand") from None

    def read_record(self, name: str, keys: dict[str, Any]) -> dict[str, Any]:
        """A JSON mapping this run wrote and now trusts (on --resume), checked: `keys` maps
        each key it must hold to its type(s); anything else is a one-line CnnlabError."""
        return check_record(self.file(name), self.read_json(name), keys)

    def save_config(self, config: Any) -> Path:
        return self.write_json("config.json", config)

    def save_environment(self, seed: int | None = None, device: str | None = None,
                         **extra: Any) -> Path:
        return self.write_json("environment.json", environment(seed=seed, device=device, **extra))

    def _config_if_any(self) -> Any:
        return self.read_json("config.json") if self.file("config.json").is_file() else None

    def save_results(self, results: Any) -> Path:
        path = self.write_json("results.json", results)
        self.events.finish(to_jsonable(results))
        return path

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line, flushed and fsynced: a crash loses at most the line being written."""
        data = (json.dumps(to_jsonable(record), allow_nan=False) + "\n").encode("utf-8")
        try:
            self._append(data)
        except OSError as exc:
            raise _naming(exc, self.file("metrics.jsonl")) from exc
        self.events.append(to_jsonable(record))  # TensorBoard's copy (tracking.py)

    def _append(self, data: bytes) -> None:
        with open(self.file("metrics.jsonl"), "ab") as f:

            def torn() -> None:  # what a crash mid-write leaves: half a line, on disk
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())

            crash_point("metrics:mid-line", before=torn)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (a crash mid-write) is left out."""
        return self._metric_lines()[0]

    def _metric_lines(self) -> tuple[list[dict[str, Any]], bool]:
        path = self.file("metrics.jsonl")
        if not path.exists():
            return [], False
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                return records, True  # a torn last line from a crash: keep everything before it
        return records, False

    def truncate_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite metrics.jsonl with only the records `keep` accepts, and without a torn last
        line; returns how many records were dropped.

        Resuming from a checkpoint calls this so that records logged after the checkpoint (which
        the resumed run will log again) and half a line from a crash do not remain.
        """
        records, torn = self._metric_lines()
        kept = [r for r in records if keep(r)]
        if len(kept) != len(records) or torn:
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            atomic_write_text(self.file("metrics.jsonl"), text)
        # TensorBoard's copy too, even where nothing was cut (a crash between a metrics line and
        # its event leaves the event file one short): from here it is metrics.jsonl again.
        self.events.sync()
        return len(records) - len(kept)

    def __str__(self) -> str:
        return str(self.path)
