"""A throwaway PostgreSQL cluster for the tests: `initdb` + `pg_ctl` into a temporary directory,
listening on a free loopback port (no Unix socket outside that directory), stopped at the end.

The server binaries are found on PATH or under /usr/lib/postgresql/*/bin (Debian's `postgresql`
package, which `make test` installs when they are missing: tools/ensure-postgresql.sh). No
binaries is a failure, never a skip. PostgreSQL refuses to run as root: as root the cluster
runs as the `postgres` user (the Debian package creates it), through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest


def find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} not found (PATH, /usr/lib/postgresql/*/bin): run `make test`, which installs "
                       "the postgresql package (tools/ensure-postgresql.sh), or install it yourself")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """`with PgCluster() as pg:` -- a running cluster; `pg.new_database()` gives a fresh URL."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="routingd-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")            # KeyError: the postgresql package is not installed
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self.user = "routingd"
        self.initdb = find_bin("initdb")
        self.pg_ctl = find_bin("pg_ctl")

    def _run(self, *args: str, timeout: float = 120) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()}\n{log}")

    def start(self) -> None:
        if not self.data.exists():
            self._run(self.initdb, "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c max_connections=200")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL (each test gets its own)."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as c:
                    c.execute(f"CREATE DATABASE {name}")
                return self.url(name)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)             # bounded: the server is starting

    def __enter__(self) -> "PgCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the whole session, stopped at its end."""
    with PgCluster() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh database of the session's cluster."""
    return pg_cluster.new_database()
