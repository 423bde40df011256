"""The reader's memory is bounded whatever the input (issues 10 and 11): a multi-hundred-MB line,
a file with no newline, a 200 MB JSON array. Each is read in a subprocess whose peak RSS is
compared with the same reader's on a small file (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from projector.jsonstream import MAX_ITEM_BYTES, PREFIX_BYTES

pytestmark = pytest.mark.slow

#: What reading may add to the peak RSS of a small input: a few chunks and the item limit.
ALLOWED_GROWTH = 4 * MAX_ITEM_BYTES

READER = """
import json, resource, sys
from projector.ingest import read_items
from projector.batch import describe_validation_error
from projector.envelope import ExecutorEvent
from pydantic import ValidationError
n = 0
problems = []
with open(sys.argv[1], "rb") as f:
    for item in read_items(f, sys.argv[1]):
        n += 1
        try:
            ExecutorEvent.parse_json(item.raw)
        except ValidationError as exc:
            problems.append([item.position, describe_validation_error(exc), len(item.raw)])
print(json.dumps({"items": n, "problems": problems,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

ROW = {
    "execution_id": 7380012345678901234,
    "event_type": "command.completed",
    "step": "fetch",
    "status": "COMPLETED",
    "created_at": "2026-11-30T12:00:00.123456Z",
}


def read(path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, object] = json.loads(done.stdout)
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> int:
    path = tmp_path_factory.mktemp("small") / "small.ndjson"
    path.write_text(json.dumps({**ROW, "event_id": 1}) + "\n")
    rss = read(path)["rss"]
    assert isinstance(rss, int)
    return rss


def write_repeated(path: Path, head: bytes, body: bytes, times: int, tail: bytes) -> int:
    with path.open("wb") as f:
        f.write(head)
        for _ in range(times):
            f.write(body)
        f.write(tail)
    return len(head) + len(body) * times + len(tail)


def test_a_multi_hundred_mb_line_is_rejected_in_pieces(tmp_path: Path, baseline: int) -> None:
    path = tmp_path / "huge-line.ndjson"
    small = json.dumps({**ROW, "event_id": 2}).encode() + b"\n"
    head = small + json.dumps(ROW).encode()[:-1] + b', "context": {"pad": "'
    size = write_repeated(path, head, b"x" * (1 << 20), 300, b'"}}\n' + small)
    out = read(path)
    line = size - 2 * len(small) - 1  # without its newline
    assert out["items"] == 3
    assert out["problems"] == [
        [
            2,
            f"line 2 is {line} bytes, more than the limit of {MAX_ITEM_BYTES} bytes (the first "
            f"{PREFIX_BYTES} are kept)",
            PREFIX_BYTES,
        ]
    ]
    assert isinstance(out["rss"], int) and out["rss"] - baseline < ALLOWED_GROWTH


def test_a_file_without_newlines_is_rejected_in_pieces(tmp_path: Path, baseline: int) -> None:
    path = tmp_path / "no-newline.bin"
    size = write_repeated(path, b"", b"\x00garbage" * (1 << 17), 300, b"")
    out = read(path)
    assert out["items"] == 1
    problems = out["problems"]
    assert isinstance(problems, list) and f"line 1 is {size} bytes" in problems[0][1]
    assert isinstance(out["rss"], int) and out["rss"] - baseline < ALLOWED_GROWTH


@pytest.mark.parametrize("shape", ["array", "ndjson"])
def test_a_200_mb_document_takes_bounded_memory(tmp_path: Path, baseline: int, shape: str) -> None:
    element = json.dumps({**ROW, "context": {"pad": "y" * 2000}}).encode()
    n = (200 << 20) // (len(element) + 2)
    path = tmp_path / f"big.{shape}"
    if shape == "array":
        write_repeated(path, b"[" + element, b",\n" + element, n - 1, b"]\n")
    else:
        write_repeated(path, b"", element + b"\n", n, b"")
    out = read(path)
    assert out["items"] == n and out["problems"] == []
    assert isinstance(out["rss"], int) and out["rss"] - baseline < ALLOWED_GROWTH
