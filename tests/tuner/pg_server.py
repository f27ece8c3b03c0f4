"""A throw-away local PostgreSQL server for tests: initdb into a temp folder, Unix socket only.

PostgreSQL refuses to run as root, so under root (CI) the server runs as the ``postgres`` system
user that Debian's package creates (or ``panther-pg``, created when neither exists). Nothing
listens on TCP (``listen_addresses=''``); clients connect through the socket in the temp folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "panther"


def find_bindir() -> Path | None:
    """Folder with ``initdb``/``pg_ctl``: ``$PANTHER_PG_BINDIR``, Debian's layout (newest), or ``PATH``."""
    candidates = [os.environ.get("PANTHER_PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                         reverse=True)
    on_path = shutil.which("initdb")
    candidates += [str(Path(on_path).parent)] if on_path else []
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root (``None``: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "panther-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "panther-pg"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return pwd.getpwnam("panther-pg")


class LocalPostgres:
    """A running server; :meth:`create_database` returns a ``postgresql://`` URL for a fresh database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="panther-pg-"))
        self.data = self.root / "data"
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._databases = 0
        try:
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8")
            options = f"-c listen_addresses='' -k {self.root} -c fsync=off -c max_connections=60"
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                      "start")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, program: str, *args: str) -> None:
        command: list[str] = [str(self.bindir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.root}"

    def create_database(self) -> str:
        import psycopg

        self._databases += 1
        name = f"tuning{self._databases}"
        with psycopg.connect(dbname="postgres", user=SUPERUSER, host=str(self.root), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A local PostgreSQL server for the session; skipped where PostgreSQL or psycopg is not installed."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    server = LocalPostgres(bindir)
    try:
        yield server
    finally:
        server.stop()
