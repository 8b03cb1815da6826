"""A real PostgreSQL for tests: Debian's server binaries, a private cluster on loopback.

`initdb` makes a data folder of its own in a fresh temporary folder, `pg_ctl` starts the
server on 127.0.0.1 and a free port (no Unix socket outside that folder), with password
(SCRAM) authentication for TCP. The gateway connects as a role that owns its database and
is no superuser, as in production. PostgreSQL refuses to run as root, so as root the
server runs as the unprivileged `postgres` user (subprocess's `user=`); as anyone else it
runs as the caller. stop()/start() keep the port and the data, so a test can take the
database away in the middle of a run and bring it back.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.sink import free_port

if TYPE_CHECKING:
    from gateway.cluster.database import Database

# The `open_node` fixture (tests/conftest.py): open_node("node2") is another node's pool.
OpenNode = Callable[..., Awaitable["Database"]]



def _newest_bin() -> Path:
    """The server programs of the newest PostgreSQL Debian's `postgresql` installed (15 on
    bookworm, 17 on trixie)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _newest_bin()
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "super-secret"
ROLE = "gateway"
ROLE_PASSWORD = "gateway-secret"


def available() -> bool:
    return all((BIN / tool).exists() for tool in ("initdb", "pg_ctl", "postgres"))


class Postgres:
    """One PostgreSQL cluster; `url(database)` is what `cluster.database` would hold."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sendsikkert-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._user: str | None = SUPERUSER if os.getuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._databases = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, check=check,
                              user=self._user, cwd=self.root, timeout=60)

    def init(self) -> Postgres:
        pwfile = self.root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self._user is not None:
            shutil.chown(pwfile, self._user)
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                  "--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\nshared_buffers = 32MB\n")
        self.start()
        self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        return self

    def running(self) -> bool:
        return self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "status",
                         check=False).returncode == 0

    def start(self) -> None:
        """Start the server (again); nothing to do while it runs."""
        if self.running():
            return
        result = self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                           "-w", "-t", "30", "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postgres did not start: {result.stderr}\n{self.logs()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `immediate` is a crash as the clients see it."""
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                  check=False)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser over the server's own Unix socket."""
        result = self._run(str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER,
                           "-d", database, "-c", statement, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def create_database(self) -> str:
        """A fresh, empty database owned by the gateway's role; its name."""
        self._databases += 1
        name = f"sendsikkert{self._databases}"
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def url(self, database: str) -> str:
        """The connection URL without the password, as `cluster.database` takes it."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_stopped(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _pids(self) -> list[int]:
        """The postmaster and every backend it runs."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return []
        main = int(pid_file.read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
        return [main, *map(int, children.stdout.split())]

    def pause(self) -> None:
        """Freeze every server process: connections open, nothing answers."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)
