"""Test-only runner of the NATS commands in a subprocess (`projector consume ...`).

Same options as the `projector` command line for these commands; it exists so the subprocess
tests don't depend on the main CLI module.

Usage: python tests/run_consume.py --database-url URL consume ...
"""

import sys

from projector.cli.nats_commands import main

if __name__ == "__main__":
    sys.exit(main())
