"""A throw-away PostgreSQL server for the tests of studies shared through a database.

    with PostgresServer() as server:
        url = server.url("cnnlab")        # postgresql://postgres@/cnnlab?host=<socket folder>

Debian's `postgresql` package (CI installs it, .ci/run) provides `initdb` and `pg_ctl` under
/usr/lib/postgresql/<major>/bin. The server is a fresh cluster in a temporary folder, listening
on a Unix socket in that folder only (no TCP port, so parallel test processes never collide),
with `trust` authentication for that socket, and stopped (fast mode) at the end.

PostgreSQL refuses to run as root, and CI runs as root: there the cluster's folder is handed to
the `postgres` system user (created by the package) and the server runs as that user through
`setpriv`; the tests, as root, connect over the socket as the database user `postgres`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_USER = "postgres"  # the system user Debian's package creates; used only when we are root
START_SECONDS = 30  # pg_ctl -w waits at most this long for the server to accept connections


def find_bindir() -> Path | None:
    """The folder with initdb and pg_ctl, or None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _as_server_user() -> list[str]:
    """The command prefix that runs the server's programs as a non-root user."""
    if os.geteuid() != 0:
        return []
    entry = pwd.getpwnam(SERVER_USER)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


class PostgresServer:
    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bindir = bindir
        # A folder of its own directly under the system's temp folder, not under pytest's
        # tmp_path: pytest keeps its base folder private (0700, and re-tightens it when another
        # pytest run starts), which would lock the server's user out of its own data.
        self.folder = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
        self.data = self.folder / "data"
        self.socket = self.folder / "socket"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*_as_server_user(), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): "
                               f"{done.stderr.strip()}\n{log.read_text() if log.exists() else ''}")

    def start(self) -> PostgresServer:
        self.socket.mkdir()
        if os.geteuid() == 0:  # the server's user must own its folders
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.folder, self.socket):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SERVER_USER,
                  "--auth=trust", "--encoding=UTF8", "--no-sync")
        # listen_addresses='' : no TCP at all; the socket in our own folder only.
        options = f"-c listen_addresses='' -c unix_socket_directories={self.socket} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "server.log"), "-w", "-t", str(START_SECONDS), "start")
        return self

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(dbname="postgres", user=SERVER_USER, host=str(self.socket),
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        """An SQLAlchemy/Optuna URL for `database` over the Unix socket."""
        return f"postgresql://{SERVER_USER}@/{database}?host={self.socket}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                          "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(predicate, seconds: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
