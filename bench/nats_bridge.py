"""Kept for old command lines: the NATS measurement is now scenario 10 of the benchmark suite.

    python bench/nats_bridge.py [--events N] [--rounds R] [--database-url ...] [--nats-url ...]

is ``python -m bench --scenarios 10`` with the same options (see bench/scenarios/nats.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import main

    raise SystemExit(main(["--scenarios", "10", *sys.argv[1:]]))
