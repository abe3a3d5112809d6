"""TensorBoard event files beside metrics.jsonl, so that `tensorboard --logdir runs/` shows
every run cnnlab trained (PyTorch Lightning's and Keras's loggers do the same).

One rule: a run directory's event file holds exactly the records of its metrics.jsonl, as
scalars with the record's global `step` as the x axis, plus the run's configuration as hparams
and, once the run has written results.json, its final numbers. `RunDir` calls this module where
it writes those files; nothing else does.

- Tags are `<kind>/<field>` for every number of a record except `step`: `step/train_loss` and
  `step/lr` (the training-loss window the engine logs every few steps), `epoch/train_loss`,
  `epoch/train_accuracy`, `epoch/val_accuracy`, `epoch/test_loss`, ... (the epoch records),
  `eval/val_loss`, `eval/val_bpc` (step mode's evaluations). The kind keeps an epoch's mean
  training loss and the last window's loss, both logged at the epoch's last step, apart.
  Records without a step (evaluate's per-model summaries) are no curve and are left out.
- hparams: config.json flattened (`train.lr`, `recipe.batch_size`, ...; lists as their JSON
  text), written as the hparams plugin's session-start record when the event file is begun.
  results.json adds `final/<field>` scalars at the last step and the session-end record; the
  HParams dashboard then lists each run with its settings against every scalar's last value.
- Resume: `truncate_metrics` cuts metrics.jsonl back to a checkpoint, and the event file is
  then rewritten from what remains (the old one deleted, a new one written from the start), so
  no step appears twice or with two values. A new file begins with a session-log START at
  step 0, the restart marker `SummaryWriter(purge_step=0)` writes. Checked with TensorBoard
  2.21: a dashboard left open on the folder shows the rewritten run at its next reload (its
  default loader; `--load_fast=false` keeps the old points until restarted).
  Every process's first write to a run directory does the same rewrite, so a crash between a
  metrics line and its event, or a metrics.jsonl removed by hand, leaves no disagreement.
  The rewritten events carry the wall time of the rewrite (metrics.jsonl holds no timestamps).
- Each write opens the file, appends and closes it: nothing is buffered in memory, so a crash
  loses at most the event being written (and the next run's rewrite restores it); no writer
  thread to flush or close.
- Without the `tensorboard` package (`pip install 'cnnlab[tensorboard]'`) nothing is written
  and nothing fails: one debug log line per process says so.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

# The suffix marks the files this module owns: a rewrite deletes only those, never event files
# a user's own SummaryWriter put into the folder.
SUFFIX = ".cnnlab"
FINAL = "final"  # tag prefix of results.json's numbers
# A list longer than this as JSON text is a table, not a setting one compares runs by (an
# experiment's grid of settings); the HParams table leaves it out.
MAX_LIST_CHARS = 200


@functools.cache
def _tb() -> SimpleNamespace | None:
    """TensorBoard's protobufs and record writer, or None where the package is not installed
    (imported once per process, on a run's first event: ~0.2 s, never by a command that
    writes no metrics)."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as exc:
        log.debug("tensorboard is not installed (%s): no event files are written", exc)
        return None
    return SimpleNamespace(event_pb2=event_pb2, summary_pb2=summary_pb2, api_pb2=api_pb2,
                           metadata=metadata, plugin_data_pb2=plugin_data_pb2,
                           RecordWriter=RecordWriter)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's TensorBoard scalars, by tag (see the module's docstring)."""
    kind = record.get("kind") or "metrics"
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if k not in ("step", "kind") and is_number(v)}


def step_of(record: dict[str, Any]) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of (name, value) pairs) as one level of `a.b.c` keys; numbers,
    strings and booleans kept, other lists as JSON text (up to MAX_LIST_CHARS), None left out
    (TensorBoard's hparams have no null)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif _is_pairs(obj):  # a frozen mapping (model_options, recipe_overrides): one column each
        out.update(flatten({k: v for k, v in obj}, prefix))
    elif isinstance(obj, list | tuple):
        text = json.dumps(obj)
        if len(text) <= MAX_LIST_CHARS:
            out[prefix] = text
    elif isinstance(obj, bool | int | float | str) and prefix:
        out[prefix] = obj
    return out


def _is_pairs(obj: Any) -> bool:
    """((name, value), ...) with distinct names: how the configs keep a mapping hashable, and
    how config.json holds it ([["depth", 4], ["pool", 2]])."""
    if not isinstance(obj, list | tuple) or not obj:
        return False
    if not all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str)
               for p in obj):
        return False
    return len({p[0] for p in obj}) == len(obj)


class EventLog:
    """The event file of one run directory. `records` reads the run's metrics.jsonl, `config`
    its config.json (None where there is none): the run directory owns those files."""

    def __init__(self, path: Path, records: Callable[[], list[dict[str, Any]]],
                 config: Callable[[], Any]):
        self.path = path
        self._records = records
        self._config = config
        self._file: Path | None = None  # this process's event file, once begun
        self._off = False  # a write failed (disk full, permissions): the run goes on

    def append(self, record: dict[str, Any]) -> None:
        """After a record was appended to metrics.jsonl: its scalars (the whole file's on this
        process's first write, or where the event file has gone)."""
        if step_of(record) is None or self._off:
            return
        tb = _tb()
        if tb is None:
            return
        if self._file is None or not self._file.exists():
            self.sync()
            return
        self._write(tb, self._scalar_events(tb, [record]))

    def sync(self) -> None:
        """Rewrite the event file from metrics.jsonl (after it was truncated, or on first
        write): the old files this module wrote are deleted, a new one holds every record."""
        records = [r for r in self._records() if step_of(r) is not None]
        stale = list(self.path.glob(f"events.out.tfevents.*{SUFFIX}"))
        if self._off or not (records or stale):
            return  # no curve (yet), and none to forget: evaluate's runs, a run just begun
        tb = _tb()
        if tb is None:
            return
        try:
            for old in stale:
                old.unlink(missing_ok=True)
        except OSError as exc:
            self._give_up(exc)
            return
        self._file = None
        if not records:
            return
        name = f"events.out.tfevents.{time.time_ns()}.{socket.gethostname()}.{os.getpid()}{SUFFIX}"
        file = self.path / name
        now = time.time()
        head = [tb.event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
                # the restart marker: a reader purges what it holds at steps >= 0 of this run
                tb.event_pb2.Event(wall_time=now, step=0, session_log=tb.event_pb2.SessionLog(
                    status=tb.event_pb2.SessionLog.START))]
        hparams = self._hparams_event(tb, now)
        self._file = file
        self._write(tb, head + ([hparams] if hparams is not None else [])
                    + self._scalar_events(tb, records))

    def finish(self, results: Any) -> None:
        """After results.json was written: its numbers as `final/...` scalars at the last step,
        and the hparams session's end."""
        records = [r for r in self._records() if step_of(r) is not None]
        if self._off or not records:
            return  # no metrics with a step: not a training run (or not its folder)
        tb = _tb()
        if tb is None:
            return
        if self._file is None or not self._file.exists():
            self.sync()
        last = max(step_of(r) or 0 for r in records)
        now = time.time()
        finals = {f"{FINAL}/{k}": float(v) for k, v in flatten(results).items() if is_number(v)}
        info = tb.plugin_data_pb2.SessionEndInfo(status=tb.api_pb2.STATUS_SUCCESS,
                                                 end_time_secs=now)
        end = tb.plugin_data_pb2.HParamsPluginData(session_end_info=info)
        self._write(tb, [self._summary_event(tb, now, last, finals),
                         self._plugin_event(tb, now, tb.metadata.SESSION_END_INFO_TAG, end)])

    # -- the events

    def _scalar_events(self, tb: SimpleNamespace, records: Iterable[dict[str, Any]]) -> list:
        now = time.time()
        return [self._summary_event(tb, now, step_of(r), scalars(r)) for r in records]

    @staticmethod
    def _summary_event(tb: SimpleNamespace, now: float, step: int | None,
                       values: dict[str, float]) -> Any:
        # simple_value: the scalar form SummaryWriter.add_scalar writes and every TensorBoard
        # reader (the event accumulator, the Rust data server) takes.
        return tb.event_pb2.Event(wall_time=now, step=step, summary=tb.summary_pb2.Summary(
            value=[tb.summary_pb2.Summary.Value(tag=t, simple_value=v)
                   for t, v in values.items()]))

    def _hparams_event(self, tb: SimpleNamespace, now: float) -> Any | None:
        config = self._config()
        if config is None:
            return None
        start = tb.plugin_data_pb2.SessionStartInfo(start_time_secs=now)
        for k, v in flatten(config).items():
            if isinstance(v, bool):
                start.hparams[k].bool_value = v
            elif isinstance(v, str):
                start.hparams[k].string_value = v
            else:
                start.hparams[k].number_value = float(v)
        data = tb.plugin_data_pb2.HParamsPluginData(session_start_info=start)
        return self._plugin_event(tb, now, tb.metadata.SESSION_START_INFO_TAG, data)

    @staticmethod
    def _plugin_event(tb: SimpleNamespace, now: float, tag: str, data: Any) -> Any:
        # The hparams plugin's records: a tag with its metadata and no value, as TensorBoard's
        # own hparams summaries (and torch's SummaryWriter.add_hparams) write them. No
        # experiment record: TensorBoard builds the table from every run's session record.
        value = tb.summary_pb2.Summary.Value(tag=tag,
                                             metadata=tb.metadata.create_summary_metadata(data))
        return tb.event_pb2.Event(wall_time=now, summary=tb.summary_pb2.Summary(value=[value]))

    def _write(self, tb: SimpleNamespace, events: list) -> None:
        if self._file is None:
            return
        try:
            with open(self._file, "ab") as f:
                writer = tb.RecordWriter(f)
                for event in events:
                    writer.write(event.SerializeToString())
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        self._off = True
        log.warning("TensorBoard events for %s are not written: %s", self.path, exc)
