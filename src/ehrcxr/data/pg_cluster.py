"""A throwaway PostgreSQL cluster on 127.0.0.1, for tests and benchmarks.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free port, password authentication
over TCP; stopped and deleted on exit. Uses Debian's server binaries (``apt-get install
postgresql``); both refuse to run as root, so as root they run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

from ehrcxr.errors import EhrcxrError


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for directory in reversed(candidates):
        if Path(directory, "pg_ctl").exists():
            return Path(directory)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise EhrcxrError("PostgreSQL server binaries not found: apt-get install -y postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    """Context manager yielding the SQLAlchemy URL of a fresh database ``dbname``."""

    def __init__(
        self, dbname: str = "mimiciv", user: str = "ehrcxr", password: str = "ehrcxr-test"
    ) -> None:
        self.dbname, self.user, self.password = dbname, user, password
        self.bin = find_pg_bin()
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ehrcxr-pg-"))
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return (
            f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.dbname}"
        )

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EhrcxrError(
                f"{args[0]} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
            )

    def __enter__(self) -> str:
        data, sock = self.dir / "data", self.dir / "sock"
        sock.mkdir()
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            pg = pwd.getpwnam("postgres")
            for p in (self.dir, sock, pwfile):
                os.chown(p, pg.pw_uid, pg.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        opts = f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        self._started = True
        admin = sa.create_engine(
            self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.dbname}"'))
        admin.dispose()
        return self.url

    def __exit__(self, *exc: object) -> None:
        try:
            if getattr(self, "_started", False):
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
