"""Results on disk: the JSON with every raw sample, a markdown report and a PNG plot beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .runner import format_value


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    out = [
        f"# noetl-projector benchmark: {doc['mode']} run of {doc['started_at'][:19]}Z",
        "",
        f"Machine: {m['host']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2**30:.0f} GiB, "
        f"{m['platform']}; PostgreSQL {m['postgresql']} ({m['database']}); Python {m['python']}; "
        f"psycopg {m['psycopg']}. Server settings: "
        + ", ".join(f"{k}={v}" for k, v in sorted(m["postgresql_settings"].items()))
        + ".",
        "",
        f"Command: `python -m bench {' '.join(doc['argv'])}`. Ratios are medians of per-round "
        "ratios (candidate and baseline alternated in every round).",
        "",
        "| # | scenario | measure | value | ratio | target |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for s in doc["scenarios"]:
        if s["error"]:
            out.append(f"| {s['id']} | {s['title']} | ERROR | {s['error']} | | |")
            continue
        if s.get("skipped"):
            out.append(f"| {s['id']} | {s['title']} | SKIPPED | {s['skipped']} | | |")
            continue
        for i, x in enumerate(s["metrics"]):
            ratio = "" if x["ratio"] is None else f"{x['ratio']:.2f}x"
            target = ""
            if x["met"] is not None:
                target = f"{'met' if x['met'] else '**MISSED**'} (>= {x['target']:g}x)"
            first = i == 0
            out.append(
                f"| {s['id'] if first else ''} | {s['title'] if first else ''} | {x['label']} | "
                f"{format_value(x['value'], x['unit'])} | {ratio} | {target} |"
            )
    out.append("")
    for s in doc["scenarios"]:
        out.append(f"## {s['id']}. {s['title']}")
        out.append("")
        out.append(
            f"Parameters: {json.dumps(s['params'])}; took {s['seconds']:.1f} s."
            + (f" Error: `{s['error']}`." if s["error"] else "")
            + (f" Skipped: {s['skipped']}." if s.get("skipped") else "")
        )
        for name, series in s["series"].items():
            if "latencies_ms" in series:
                ms = ", ".join(f"{x:.2f}" for x in series["latencies_ms"][:20])
                out.append(f"- {name}: {len(series['latencies_ms'])} samples (ms, first 20): {ms}")
                continue
            if "samples" not in series:  # plain per-round figures (rates, lags) of one variant
                parts = [
                    f"{key}: " + ", ".join(f"{x:,.2f}" for x in values)
                    for key, values in series.items()
                ]
                out.append(f"- {name}: rounds: " + "; ".join(parts))
                continue
            rates = ", ".join(f"{x['rate']:,.0f}" for x in series["samples"])
            out.append(f"- {name}: median {series['median_rate']:,.0f}/s; rounds: {rates}")
        for note in s["notes"]:
            out.append(f"- {note}")
        for title, plan in s["plans"].items():
            out += ["", f"`EXPLAIN (ANALYZE, BUFFERS)` of {title}:", "", "```", plan, "```"]
        out.append("")
    return "\n".join(out)


def plot(doc: dict[str, Any], path: Path) -> bool:
    """Draw the plot; False (nothing written) when no scenario measured anything."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [
        {**s, "series": {k: v for k, v in s["series"].items() if "median_rate" in v}}
        for s in doc["scenarios"]
    ]
    scenarios = [s for s in scenarios if s["series"]]
    if not scenarios:  # every scenario skipped or failed
        return False
    ratios = [
        (f"{s['id']}: {x['label']}", x["ratio"], x["target"])
        for s in doc["scenarios"]
        for x in s["metrics"]
        if x["ratio"] is not None and math.isfinite(x["ratio"])
    ]
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(11, 4 + 0.35 * (sum(len(s["series"]) for s in scenarios) + len(ratios)))
    )
    labels, values, colors = [], [], []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(scenarios):
        for name, series in s["series"].items():
            labels.append(f"{s['id']}: {name}")
            values.append(series["median_rate"])
            colors.append(palette[i % len(palette)])
    ax1.barh(labels, values, color=colors)
    ax1.invert_yaxis()
    ax1.set_xscale("log")
    ax1.set_xlabel("events/s (median of rounds, log scale)")
    ax1.set_title("Throughput per scenario and variant")
    if ratios:
        ax2.barh([r[0] for r in ratios], [r[1] for r in ratios], color="tab:blue")
        for y, (_, _, target) in enumerate(ratios):
            if target is not None:
                ax2.plot([target, target], [y - 0.4, y + 0.4], color="tab:red")
        ax2.axvline(1.0, color="grey", linestyle=":")
        ax2.invert_yaxis()
        ax2.set_xscale("log")
        ax2.set_xlabel("ratio to baseline (red: target)")
        ax2.set_title("Ratios")
    fig.suptitle(f"noetl-projector bench, {doc['mode']} run, {doc['machine']['host']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(directory: Path, stem: str, doc: dict[str, Any]) -> list[Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` (the plot needs matplotlib)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.json", directory / f"{stem}.md"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(doc) + "\n")
    try:
        if plot(doc, directory / f"{stem}.png"):
            paths.append(directory / f"{stem}.png")
    except ImportError:
        doc_note = "matplotlib is not installed: no plot (pip install -e '.[bench]')"
        print(f"bench: {doc_note}")
    return paths
