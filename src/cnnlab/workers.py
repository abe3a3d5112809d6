"""Worker processes for `--workers N` (`cnnlab sweep`, `cnnlab experiment`): one pool, one
behaviour for both.

    with Pool(["sweep", "--worker", str(run_dir.path)], 1, share_cores(2), reporter) as pool:
        ...                    # the main process's own share of the work
        failed = pool.wait()   # the workers that ended with a non-zero exit status

Worker K (1..n; the main process is 0) is `python -m cnnlab ARGV --worker-index K [-q]`, the
same Python as this one, and calls `watch_parent()` first.

- It dies with the main process. Its stdin is a pipe whose only write end the main process
  holds: when the main process ends, however it ends (kill -9 included), the worker reads
  end-of-file and exits (status 3). No trial goes on training for nobody; the one it was
  running stays RUNNING in its Optuna study, and `--resume` retries it (orphan recovery).
- Its output (stdout and stderr) comes through a pipe and is passed on a line at a time,
  prefixed `[worker K]`, through the main process's reporter: no progress bars of a worker's
  cross the main process's. A quiet reporter still passes every line on (a quiet worker
  writes only errors, which are never silenced).
- A worker that fails is noticed: `wait` returns it as a `Failed` (index, pid, exit status,
  its last line) for the command to name in its one-line error after saving what finished.
  An error or Ctrl-C in the main process stops the workers (`Pool.__exit__`).
- The cores are shared out: each process, this one included, runs cores / processes torch
  threads (`share_cores`): OMP_NUM_THREADS in the workers' environment (torch's default
  thread count reads it), `torch.set_num_threads` here while the pool is open.

It knows no task, so it sits at the bottom of the import graph beside `dist` (which starts
processes for torchrun); the reporter is taken by its interface (`log`, `quiet`, `prefix`,
`err`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

# Seconds a worker gets to end after SIGTERM (its current step, a checkpoint) before SIGKILL.
STOP_SECONDS = 30


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: `taskset`, a container's limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def share_cores(processes: int, threads: int | None = None) -> int:
    """Torch threads per process: the user's `threads`, else the cores shared out."""
    return threads or max(1, available_cores() // processes)


@dataclass(frozen=True)
class Failed:
    """A worker that ended with a non-zero exit status (negative: killed by that signal)."""

    index: int
    pid: int
    status: int
    last_line: str  # its last words: a one-line error, or a traceback's last line

    def why(self, what: str = "") -> str:
        """'worker K (WHAT) stopped with exit status S: LAST LINE'."""
        return (f"worker {self.index}{f' ({what})' if what else ''} stopped with exit status "
                f"{self.status}" + (f": {self.last_line}" if self.last_line else ""))


class Worker:
    """A worker process and the thread that passes its output on, prefixed, to the reporter."""

    def __init__(self, index: int, proc: subprocess.Popen, reporter: Any):
        self.index, self.proc = index, proc
        self.tail: deque[str] = deque(maxlen=20)
        self.thread = threading.Thread(target=self._relay, args=(reporter,), daemon=True)
        self.thread.start()

    def _relay(self, reporter: Any) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            if reporter.quiet:  # a quiet worker prints only errors: never silence them
                print(f"{reporter.prefix}[worker {self.index}] {line}", file=reporter.err,
                      flush=True)
            else:
                reporter.log(f"[worker {self.index}] {line}")

    def wait(self) -> int:
        code = self.proc.wait()
        self.thread.join()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def last_line(self) -> str:
        return next((t.strip() for t in reversed(self.tail) if t.strip()), "")


class Pool:
    """Workers 1..n of one command, open for a `with` block (see the module's docstring).
    `argv`: the command after `python -m cnnlab`; each worker adds `--worker-index K`, and
    `-q` when `quiet` (default: the reporter's). n = 0 starts nothing and leaves the threads."""

    def __init__(self, argv: list[str], n: int, threads: int, reporter: Any,
                 quiet: bool | None = None):
        self.argv, self.n, self.threads, self.reporter = list(argv), n, threads, reporter
        self.quiet = reporter.quiet if quiet is None else quiet
        self.workers: list[Worker] = []
        self._threads_before: int | None = None

    def command(self, index: int) -> list[str]:
        return ([sys.executable, "-m", "cnnlab", *self.argv, "--worker-index", str(index)]
                + (["-q"] if self.quiet else []))

    def __enter__(self) -> Pool:
        if self.n == 0:
            return self
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        try:
            for k in range(1, self.n + 1):
                proc = subprocess.Popen(self.command(k), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env)
                self.workers.append(Worker(k, proc, self.reporter))
        except BaseException:
            self._stop()
            raise
        import torch

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self

    def wait(self) -> list[Failed]:
        """Wait for every worker to end; those that failed, in order."""
        codes = [w.wait() for w in self.workers]
        return [Failed(w.index, w.proc.pid, code, w.last_line())
                for w, code in zip(self.workers, codes, strict=True) if code != 0]

    def _stop(self) -> None:
        for w in self.workers:
            w.stop()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:  # Ctrl-C or an error here: the workers' work is for nothing
                self._stop()
            else:
                self.wait()  # a block that did not wait: no worker left running behind it
        finally:
            if self._threads_before is not None:
                import torch

                torch.set_num_threads(self._threads_before)


def watch_parent() -> None:
    """In a worker: end this process when the main process is gone, i.e. when its stdin
    reaches end-of-file (the main process held the only write end). Call it first thing."""
    def wait() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a buffered
        # reader aborts the interpreter's shutdown ("could not acquire lock").
        while os.read(0, 4096):
            pass
        os._exit(3)

    threading.Thread(target=wait, daemon=True).start()
