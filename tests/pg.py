"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temp dir on a free port.

Locally, without the server binaries, the tests that need it skip with a reason; in CI
(``CI=true``) a missing server is an error, so those tests cannot silently stop running.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """A running throwaway server; ``stop``/``start`` simulate an outage."""

    def __init__(self, pg_ctl: str, data: Path, opts: str, log: Path, as_user: list[str], url: str) -> None:
        self.pg_ctl, self.data, self.opts, self.log, self.as_user, self.url = pg_ctl, data, opts, log, as_user, url

    def start(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-o", self.opts, "-l", str(self.log),
                        "-w", "start"], check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"],
                       capture_output=True)


@contextmanager
def postgres_server() -> Iterator[PgServer]:
    """Start a server; yields it, ``.url`` a SQLAlchemy URL (user ``llm``, password ``s3cret-pw``)."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="llm_doe_pg_"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    pwfile = root / "pw"
    pwfile.write_text("s3cret-pw\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "llm", "--pwfile", str(pwfile), "-A", "scram-sha-256",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    server = PgServer(pg_ctl, data, opts, root / "log", as_user,
                      f"postgresql+psycopg2://llm:s3cret-pw@127.0.0.1:{port}/studies")
    server.start()
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"postgresql+psycopg2://llm:s3cret-pw@127.0.0.1:{port}/postgres",
                                          isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("CREATE DATABASE studies"))
        engine.dispose()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
