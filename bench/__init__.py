"""The benchmark suite of noetl-projector: `python -m bench --help`.

Not part of the installed package; its extra dependencies come with ``pip install -e ".[bench]"``.
Every figure is measured side by side with its baseline in the same run (alternating, several
rounds, median reported); see docs/performance.md.
"""
