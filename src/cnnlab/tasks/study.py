"""The Optuna machinery `cnnlab sweep` and `cnnlab experiment` share: a study in a storage, a
lock, orphan recovery and the trial loop (the trials as rows and CSV: study_rows.py).

    study = open_study(storage_url(None, run_dir), "my-study", sampler, pruner)
    ran = run_study(study, run_dir, objective, n_trials=20, reporter=reporter)
    write_trials_csv(run_dir, trial_rows(study))  # from cnnlab.tasks.study_rows

Only Optuna's public API is used: the RDB storage is an `optuna.storages.RDBStorage` that this
module creates and keeps (`Study.storage`), trials are found by number through it, and finished
through `optuna.Study.tell`.

Storage: SQLite in the run directory by default (`RUN/study.db`), or any URL
(`--storage postgresql://...`) shared by several processes or machines. Trials are counted in
the storage, so `n_trials` means that many trials over every process and every resume:

- A worker takes a trial under a lock (a file lock beside a SQLite database; other databases
  rely on Optuna's atomic trial numbers, and a trial started past the count in a race is failed
  as "surplus" before it runs).
- A trial whose process died (`kill -9`, a power cut) stays RUNNING in the storage. Every worker,
  before it takes a trial, looks for RUNNING trials of this machine whose process is gone (pid
  and start time recorded with the trial): such a trial is marked FAIL ("retried") and its
  settings are queued again as a new trial, which runs it from the start. The failed attempt no
  longer counts, the retry does: nothing is lost, nothing counted twice.
- A trial of another machine is judged by Optuna's heartbeat, on a server storage only (SQLite
  lives on one machine, where the pid check above is exact): a running trial records a
  heartbeat every `heartbeat_seconds()` (60 s; `CNNLAB_HEARTBEAT` sets it), and one whose last
  heartbeat is older than `GRACE_BEATS` of them is failed by whichever process looks next
  (`optuna.storages.fail_stale_trials`), which queues its settings again the same way.
- A fixed plan of queued trials (an experiment's grid) may be queued by two machines at once:
  each queued trial carries its entry's key (`PLAN`), and of twins only the first is run, the
  other failed as "surplus" unrun (`run_study`, which with `queued_only` never samples).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab import checkpoints
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir

if TYPE_CHECKING:
    import optuna

    from cnnlab.progress import Overall

STUDY_DB = "study.db"
TRIALS_DIR = "trials"
RACE_RETRIES = 5  # attempts to open a new SQLite study that another worker is creating
HEARTBEAT_SECONDS = 60  # a server storage's heartbeat: one small UPDATE a minute per trial
# A trial is stale after this many missed heartbeats: long enough that a busy machine (a
# training step holding the GIL, a slow database) is never taken for a dead one.
GRACE_BEATS = 3
# User attributes that belong to the process that ran a trial, not to its settings: a retry
# does not inherit them.
OWNER_KEYS = ("host", "pid", "process_start", "run_dir")
# A queued trial's entry in a fixed plan (an experiment's setting and seed). Processes on
# several machines may queue the same plan at once (a server storage has no lock): of trials
# with the same entry only the first that counts is run, a later twin is dropped unrun.
PLAN = "plan"


# --------------------------------------------------------------------------- storage, lock


def storage_url(config_storage: str | None, run_dir: RunDir) -> str:
    """The user's storage URL, or SQLite in the run directory."""
    return config_storage or f"sqlite:///{run_dir.path.resolve() / STUDY_DB}"


def redact_url(url: str) -> str:
    """A storage URL without its password (results and reports are shared)."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def heartbeat_seconds() -> int:
    """Seconds between a running trial's heartbeats on a server storage (CNNLAB_HEARTBEAT)."""
    value = os.environ.get("CNNLAB_HEARTBEAT", "")
    try:
        seconds = int(value) if value else HEARTBEAT_SECONDS
    except ValueError:
        raise CnnlabError(f"CNNLAB_HEARTBEAT={value!r}: not a whole number of seconds") from None
    if seconds < 1:
        raise CnnlabError(f"CNNLAB_HEARTBEAT={value!r}: must be at least 1 second")
    return seconds


def open_storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    kwargs: dict[str, Any] = {}
    beats: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Wait for another process's write instead of failing with "database is locked".
        kwargs = {"connect_args": {"timeout": 120}}
    else:  # a server shared by machines: a dead machine's trials are found by their heartbeat
        seconds = heartbeat_seconds()
        beats = {"heartbeat_interval": seconds, "grace_period": GRACE_BEATS * seconds,
                 "heartbeat_stale_trial_callback": queue_retry}
    # Two workers starting on a new database race to create its tables: the loser sees "table
    # ... already exists" (seen in CI). The winner's tables are then there: try again.
    for attempt in range(RACE_RETRIES):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beats)
        except (ImportError, ValueError) as exc:
            raise CnnlabError(f"cannot open the study storage {redact_url(url)!r}: {exc}") from None
        except Exception as exc:  # sqlalchemy's errors: a wrong URL, a server that is not there
            racing = "already exists" in str(exc) or "UNIQUE constraint" in str(exc)
            if racing and attempt + 1 < RACE_RETRIES:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise CnnlabError(f"cannot open the study storage {redact_url(url)!r}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Exclusive among this machine's processes for a SQLite study (a lock file beside the
    database); a no-op for server databases, whose trial numbers Optuna assigns atomically."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(url.removeprefix("sqlite:///") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Study:
    """An Optuna study together with the storage object it lives in and that storage's URL
    (the lock's key): what every function below takes."""

    url: str
    storage: optuna.storages.RDBStorage
    optuna_study: optuna.Study

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return study_lock(self.url)

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.optuna_study.get_trials(deepcopy=False)

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        """Set a user attribute on any unfinished trial of the study (not only one this process
        asked for), by its number."""
        study_id = self.storage.get_study_id_from_name(self.optuna_study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.storage.set_trial_user_attr(trial_id, key, value)


def open_study(url: str, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None,
               direction: str = "maximize") -> Study:
    """The study `name` in the storage at `url`, created on first use (under the lock, so two
    workers starting together create it once)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    with study_lock(url):
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                    pruner=pruner, direction=direction, load_if_exists=True)
    return Study(url, storage, study)


def plan_key(params: dict[str, Any]) -> str:
    """A plan entry's key: its settings, in a fixed order (user attribute `PLAN`)."""
    import json

    return json.dumps(params, sort_keys=True)


def derived_seed(*parts: Any) -> int:
    """A sampler seed from a study's seed and what makes this process different (its worker
    index, the trials already in the study): reproducible, but two workers or a resume do not
    propose the same settings again."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --------------------------------------------------------------------------- orphans


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def owner() -> dict[str, Any]:
    """What a trial records of the process that runs it (to find it orphaned later)."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid())}


def _orphaned(t: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial of this machine whose process is gone (or is another process now)."""
    a = t.user_attrs
    if a.get("host") != socket.gethostname() or "pid" not in a:
        return False
    start = _process_start(int(a["pid"]))
    return start is None or abs(start - float(a.get("process_start") or 0)) > 1.0


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of the trials that a later trial retries."""
    return {int(t.user_attrs["retry_of"]) for t in trials
            if t.user_attrs.get("retry_of") is not None}


def takes_slot(t: optuna.trial.FrozenTrial, retried: set[int] | frozenset = frozenset()
               ) -> bool:
    """Whether a trial counts towards the number of trials: every trial but a failed one that
    was retried (its retry counts: marked so, or its number in `retried`, see
    `retried_numbers`) or started past the count in a race."""
    from optuna.trial import TrialState

    return not (t.state == TrialState.FAIL
                and (t.user_attrs.get("retried") or t.user_attrs.get("surplus")
                     or t.number in retried))


def queue_retry(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Queue a dead trial's settings again as a new trial that records what it retries; its
    other user attributes (e.g. an experiment's seed round) go with it, the dead process's
    do not. Also Optuna's callback for a trial failed by its stale heartbeat."""
    import json

    attrs = {k: v for k, v in t.user_attrs.items()
             if k not in (*OWNER_KEYS, "retried", "retry_of")}
    # A queued plan entry's settings are in its key: a process that died between taking the
    # trial and its objective's first suggestion left no params.
    params = json.loads(attrs[PLAN]) if PLAN in attrs else dict(t.params)
    study.enqueue_trial(params, user_attrs={**attrs, "retry_of": t.number})


def recover_orphans(study: Study, reporter) -> list[int]:
    """Fail this machine's trials whose process died and queue their settings again (once);
    on a server storage, also any machine's trials whose heartbeat stopped. Call under
    `study.lock()`. Returns the numbers of the trials failed here by their process's death."""
    import optuna
    from optuna.trial import TrialState

    before = {t.number for t in study.trials() if t.state == TrialState.RUNNING}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study.optuna_study)  # no-op without heartbeats
    trials = study.trials()
    stale = [t.number for t in trials if t.number in before and t.state == TrialState.FAIL]
    for number in stale:
        reporter.log(f"trial {number}: no heartbeat for {GRACE_BEATS} beats (its machine "
                     "stopped?); failed and queued again")
    retried_of = retried_numbers(trials)
    failed = []
    for t in trials:
        if t.state != TrialState.RUNNING or not _orphaned(t):
            continue
        study.set_user_attr(t.number, "retried", True)
        if t.number not in retried_of:
            queue_retry(study.optuna_study, t)
        # Finished meanwhile by someone else (a server storage shared with another machine
        # that took it over): nothing to fail.
        study.optuna_study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(t.number)
        reporter.log(f"trial {t.number}: its process ({t.user_attrs.get('pid')}) is gone; "
                     "failed and queued again")
    return failed


# --------------------------------------------------------------------------- the trial loop


@dataclass
class Trial:
    """What an objective gets: the Optuna trial, its directory, its deadline and the reporter
    its work reports through (a step of the study's overall display, when there is one)."""

    optuna_trial: optuna.Trial
    run_dir: RunDir
    deadline: float | None  # time.time() after which the trial should stop (the budget)
    reporter: Any = None


Objective = Callable[[Trial], tuple[float, dict[str, Any]]]
# A group's: its trials (claimed together), each one's (value, attributes) or what failed it.
Outcome = tuple[float, dict[str, Any]] | Exception
GroupObjective = Callable[[list[Trial]], list[Outcome]]


class Pruned(Exception):
    """Raised by a trial that the pruner stopped; carries the trial's attributes."""

    def __init__(self, attrs: dict[str, Any]):
        super().__init__("pruned")
        self.attrs = attrs


def run_study(study: Study, run_dir: RunDir, objective: Objective, n_trials: int, reporter,
              deadline: float | None = None, display: Overall | None = None,
              queued_only: bool = False) -> int:
    """Take trials from `study` and run them until `n_trials` trials exist in it (over every
    process), none is queued, or `deadline` (time.time()) passes. Each trial runs in
    RUN/trials/trial-NNNN/. Returns how many ran here.

    With `display` (`reporter.overall(..., n_trials)`), each trial is a step of it: step k
    when k - 1 trials of the study have finished, in any process or an earlier run, so the bar
    and its ETA count the whole study, not this process's share.

    `queued_only`: the study is a fixed plan of queued trials (an experiment's grid): stop
    when none is queued, never ask the sampler for a new one (on a shared storage another
    process may be queueing its plan while this one counts)."""
    ran = 0
    while deadline is None or time.time() < deadline:
        claim = _claim(study, n_trials, reporter, display, queued_only)
        if claim == STOP:
            break
        if claim == SKIP:
            continue
        trial, rep = claim
        folder = _trial_folder(run_dir, trial)
        start = time.time()
        try:
            with heartbeat(study, trial.number):
                outcome: Outcome = objective(Trial(trial, RunDir.create("trial", out=folder),
                                                   deadline, rep))
        except Exception as exc:  # one bad setting (or a bug in one trial) must not end it
            outcome = exc
        _finish(study, trial, outcome, time.time() - start, rep, folder)
        ran += 1
        checkpoints.crash_point(f"sweep:trial-{trial.number}:told")
    return ran


def run_study_groups(study: Study, run_dir: RunDir, objective: GroupObjective, n_trials: int,
                     reporter, key: Callable[[dict[str, Any]], Any], size: int,
                     deadline: float | None = None) -> int:
    """`run_study(queued_only=True)` taking up to `size` queued trials at a time whose
    `key(user_attrs)` is the same (an experiment's seeds of one setting, trained together as
    one batched model), and running each such group through `objective` in one call. Each
    trial is claimed, beaten for (heartbeat), told and recovered as run_study does it: a
    trial claimed is a trial, whatever its group. A group ends at the first queued trial of
    another key (the queue is in the plan's order, setting by setting); on a server storage
    another process may take a queued trial between the look and the claim, so the claimed
    trials are grouped by their keys again before they run. A trial's "seconds" are its
    share of its group's wall time; "together" lists its group's trial numbers."""
    if size < 1:
        raise ValueError(f"group size must be at least 1, not {size}")
    ran = 0
    while deadline is None or time.time() < deadline:
        claimed: list[tuple[optuna.Trial, Any]] = []
        while len(claimed) < size:
            first = key(claimed[0][0].user_attrs) if claimed else None
            claim = _claim(study, n_trials, reporter, None, True,
                           want=None if not claimed else
                           lambda t, first=first: key(t.user_attrs) == first)
            if claim == STOP:
                break
            if claim != SKIP:
                claimed.append(claim)
        if not claimed:
            break
        groups: dict[Any, list[tuple[optuna.Trial, Any]]] = {}
        for trial, rep in claimed:
            groups.setdefault(key(trial.user_attrs), []).append((trial, rep))
        for members in groups.values():
            ran += _run_group(study, run_dir, objective, members, deadline)
    return ran


def _run_group(study: Study, run_dir: RunDir, objective: GroupObjective,
               members: list[tuple[optuna.Trial, Any]], deadline: float | None) -> int:
    """One claimed group through its objective, every trial told; returns how many."""
    folders = [_trial_folder(run_dir, trial) for trial, _ in members]
    numbers = [trial.number for trial, _ in members]
    start = time.time()
    try:
        with contextlib.ExitStack() as beats:
            for number in numbers:
                beats.enter_context(heartbeat(study, number))
            outcomes = objective([Trial(trial, RunDir.create("trial", out=folder), deadline,
                                        rep) for (trial, rep), folder in zip(members, folders,
                                                                             strict=True)])
        if len(outcomes) != len(members):
            raise RuntimeError(f"a group objective gave {len(outcomes)} outcomes for "
                               f"{len(members)} trials")
    except Exception as exc:  # the group's failure is each of its trials'
        outcomes = [exc] * len(members)
    share = (time.time() - start) / len(members)
    for (trial, rep), folder, outcome in zip(members, folders, outcomes, strict=True):
        if len(members) > 1:
            trial.set_user_attr("together", numbers)
        _finish(study, trial, outcome, share, rep, folder)
        checkpoints.crash_point(f"sweep:trial-{trial.number}:told")
    return len(members)


STOP, SKIP = "stop", "skip"  # what _claim returns instead of a trial


def _claim(study: Study, n_trials: int, reporter, display: Overall | None, queued_only: bool,
           want: Callable[[optuna.trial.FrozenTrial], bool] | None = None):
    """Take the next trial under the lock (orphans recovered first): (trial, its reporter),
    or STOP (nothing left to take; with `want`, also when the first queued trial is not
    wanted), or SKIP (it was a twin of a plan entry, failed as surplus unrun)."""
    from optuna.trial import TrialState

    with study.lock():
        recover_orphans(study, reporter)
        trials = study.trials()
        retried = retried_numbers(trials)
        used = sum(takes_slot(t, retried) for t in trials)
        waiting = {t.number: t for t in trials if t.state == TrialState.WAITING}
        if not waiting and (queued_only or used >= n_trials):
            return STOP
        if want is not None and (not waiting or not want(waiting[min(waiting)])):
            return STOP  # ask() takes the first queued trial
        # A queued trial first (a retry, a grid point), else a new one.
        with warnings.catch_warnings():  # we beat ourselves (`heartbeat`) around ask/tell
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed")
            trial = study.optuna_study.ask()
        _set_attrs(trial, owner())
    finished = sum(t.state.is_finished() and takes_slot(t, retried) for t in trials)
    rep = (display.step(min(finished + 1, n_trials), f"trial {trial.number}")
           if display is not None else reporter)
    twin = _twin(study, trial) if trial.number in waiting else None
    if twin is not None:
        trial.set_user_attr("surplus", True)
        study.optuna_study.tell(trial, state=TrialState.FAIL)
        rep.log(f"trial {trial.number}: queued twice (by two processes at once); trial "
                f"{twin} runs it")
        return SKIP
    if trial.number not in waiting:
        now = study.trials()
        earlier = [t for t in now
                   if t.number < trial.number and takes_slot(t, retried_numbers(now))]
        if len(earlier) >= n_trials:  # started past the count in a race (server storage)
            trial.set_user_attr("surplus", True)
            study.optuna_study.tell(trial, state=TrialState.FAIL)
            return STOP
    return trial, rep


def _trial_folder(run_dir: RunDir, trial: optuna.Trial) -> Path:
    folder = run_dir.path / TRIALS_DIR / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(folder.relative_to(run_dir.path)))
    return folder


def _finish(study: Study, trial: optuna.Trial, outcome: Outcome, seconds: float, rep,
            folder: Path) -> None:
    """Tell the storage how a trial ended: pruned, failed (one line on why) or its value. A
    trial another process already failed as stale (late heartbeats on a busy machine) is no
    longer this process's to tell: one line, and the sweep goes on."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        if isinstance(outcome, Pruned):
            _set_attrs(trial, {**outcome.attrs, "seconds": round(seconds, 1)})
            study.optuna_study.tell(trial, state=TrialState.PRUNED)
            rep.log(f"trial {trial.number}: pruned after epoch {outcome.attrs.get('epochs')}")
        elif isinstance(outcome, Exception):
            trial.set_user_attr("error", f"{type(outcome).__name__}: {outcome}"[:500])
            study.optuna_study.tell(trial, state=TrialState.FAIL)
            rep.log(f"trial {trial.number}: failed — {_failure(outcome, folder)}")
        else:
            value, attrs = outcome
            _set_attrs(trial, {**attrs, "seconds": round(seconds, 1)})
            study.optuna_study.tell(trial, value)
            rep.log(f"trial {trial.number}: {value:.4f} ({trial.params})")
    except UpdateFinishedTrialError:
        rep.log(f"trial {trial.number}: already failed as stale by another process while it "
                f"ran (late heartbeats); its result stays in {folder} and is not counted")


def _twin(study: Study, trial: optuna.Trial) -> int | None:
    """The number of an earlier trial that counts and has queued `trial`'s plan entry, if
    any (see PLAN)."""
    key = trial.user_attrs.get(PLAN)
    if key is None:
        return None
    trials = study.trials()
    retried = retried_numbers(trials)
    return next((t.number for t in sorted(trials, key=lambda t: t.number)
                 if t.number < trial.number and t.user_attrs.get(PLAN) == key
                 and takes_slot(t, retried)), None)


@contextlib.contextmanager
def heartbeat(study: Study, number: int) -> Iterator[None]:
    """Record trial `number`'s heartbeat now and every heartbeat interval until the block
    ends, on a storage with heartbeats (a server); nothing on SQLite. A daemon thread: a
    process killed mid-trial stops beating, which is the point."""
    interval = study.storage.get_heartbeat_interval()
    if not interval:
        yield
        return
    study_id = study.storage.get_study_id_from_name(study.optuna_study.study_name)
    trial_id = study.storage.get_trial_id_from_study_id_trial_number(study_id, number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a database hiccup: the next beat retries
                study.storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    study.storage.record_heartbeat(trial_id)  # stale-checkable from its first second
    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _failure(exc: Exception, folder: Path) -> str:
    """One line on why a trial failed. A user's mistake (CnnlabError) says it all; anything
    else is a bug whose traceback a maintainer needs: it goes to the trial's traceback.txt, not
    to the terminal, where it would bury the other trials' progress."""
    if isinstance(exc, CnnlabError):
        return str(exc)
    import traceback

    path = folder / "traceback.txt"
    folder.mkdir(parents=True, exist_ok=True)
    RunDir(folder).write_text(path.name, "".join(traceback.format_exception(exc)))
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first} (a bug in cnnlab? traceback in {path})"


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
