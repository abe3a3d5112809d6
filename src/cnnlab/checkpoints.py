"""Checkpoints that are one atomic unit: weights, training state and their description.

A checkpoint called `name` in a run directory is three files:

    checkpoints/<name>-<serial>.safetensors   the model's tensors (safetensors: no pickle)
    checkpoints/<name>-<serial>.state.pt      optimiser, schedule, RNG states, counters
                                              (tensors and plain containers: loads with
                                              `torch.load(weights_only=True)`)
    <name>.json                               written last: names the two files, says what
                                              step/epoch they hold, plus free-form metadata

Each save writes new files under a fresh serial and only then replaces `<name>.json`
(`os.replace`, atomic on POSIX), so a crash at any moment — `kill -9` included — leaves the JSON
naming a complete previous pair, never new weights beside an old optimiser. Files no JSON names
any more are deleted after the switch; a crash before that leaves only litter, which the next
save removes.

Tests crash the process at the worst moments on purpose: with `CNNLAB_CRASH_AT=<point>` set, the
process kills itself with SIGKILL at that point (see `crash_point`).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.runs import atomic_write_bytes, atomic_write_json

FORMAT = "cnnlab-checkpoint/1"
SUBDIR = "checkpoints"


def crash_point(name: str) -> None:
    """SIGKILL this process here when CNNLAB_CRASH_AT names this point (tests only).

    SIGKILL, not an exception: nothing is flushed, no `finally` runs — the same as a power cut
    or the OOM killer, which is what resume must survive.
    """
    if os.environ.get("CNNLAB_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Checkpoint:
    meta: dict[str, Any]  # the JSON: format, serial, files, plus the caller's metadata
    weights: dict[str, torch.Tensor]
    state: dict[str, Any] | None  # None when loaded with state=False or saved without one


def _serial_of(path: Path, name: str) -> int | None:
    m = re.fullmatch(rf"{re.escape(name)}-(\d+)\.(safetensors|state\.pt)", path.name)
    return int(m.group(1)) if m else None


def save(
    run_dir: str | Path,
    name: str,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `name` (e.g. "last", "best") atomically; returns the JSON's path."""
    from safetensors.torch import save as st_save

    root = Path(run_dir)
    folder = root / SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    serials = [s for p in folder.iterdir() if (s := _serial_of(p, name)) is not None]
    serial = max(serials, default=0) + 1
    weights_file = f"{SUBDIR}/{name}-{serial:06d}.safetensors"
    # safetensors refuses shared or non-contiguous storage: save plain copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    atomic_write_bytes(root / weights_file, st_save(tensors))
    state_file = None
    if state is not None:
        state_file = f"{SUBDIR}/{name}-{serial:06d}.state.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(root / state_file, buf.getvalue())
    crash_point(f"{name}:files-written")
    record = {"format": FORMAT, "serial": serial, "weights": weights_file, "state": state_file,
              **meta}
    atomic_write_json(root / f"{name}.json", record)
    crash_point(f"{name}:json-written")
    keep = {weights_file, state_file}
    for p in folder.iterdir():
        if _serial_of(p, name) is not None and f"{SUBDIR}/{p.name}" not in keep:
            p.unlink(missing_ok=True)
    return root / f"{name}.json"


def exists(run_dir: str | Path, name: str) -> bool:
    return (Path(run_dir) / f"{name}.json").is_file()


def read_meta(run_dir: str | Path, name: str) -> dict[str, Any]:
    path = Path(run_dir) / f"{name}.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"no {name!r} checkpoint in {run_dir} ({path.name} is missing)") from None
    except (OSError, ValueError) as exc:
        raise CnnlabError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (format {FORMAT})")
    return meta


def load(run_dir: str | Path, name: str, state: bool = True) -> Checkpoint:
    """Checkpoint `name` of a run: its JSON, weights and (if asked and saved) state."""
    from safetensors.torch import load_file

    root = Path(run_dir)
    meta = read_meta(root, name)
    try:
        weights = load_file(str(root / meta["weights"]))
        st = None
        if state and meta.get("state"):
            st = torch.load(root / meta["state"], map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CnnlabError(f"checkpoint {name!r} in {root} is unreadable: {exc}") from exc
    return Checkpoint(meta, weights, st)
