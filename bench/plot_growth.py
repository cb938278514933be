"""Plot what `bench/event_growth.py --json` wrote: cost against the size of the database.

    python bench/plot_growth.py sqlite.json [postgresql.json …] --out docs/performance.png

Left: the median time to record one event at each size (wall clock, and this process's
CPU time where recorded), as a ratio to the smallest size (flat = the cost does not grow
with the database). Middle: seconds the replay of
`rapport verify` takes (log-log: a straight line of slope 1 is linear growth). Then the
replay's CPU µs per event in the database (flat = linear), and, where recorded, the peak
memory of `rapport verify` run as its own process (flat = it does not hold the log).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/performance.png"))
    args = parser.parse_args()
    fig, (probe, replay, per_event, memory) = plt.subplots(1, 4, figsize=(20, 4.5))
    for path in args.results:
        run = json.loads(path.read_text())
        sizes = run["sizes"]
        x = [s["events"] for s in sizes]
        base = sizes[0]["median_ms"]
        probe.plot(x, [s["median_ms"] / base for s in sizes], "o-", label=f"{run['database']} median")
        probe.plot(x, [s["p95_ms"] / base for s in sizes], "x--", label=f"{run['database']} p95 / smallest median")
        if all("cpu_median_ms" in s for s in sizes):
            probe.plot(x, [s["cpu_median_ms"] / sizes[0]["cpu_median_ms"] for s in sizes], "s:", label=f"{run['database']} CPU median")
        replay.plot(x, [s["verify_s"] for s in sizes], "o-", label=f"{run['database']} wall")
        replay.plot(x, [s["verify_cpu_s"] for s in sizes], "x--", label=f"{run['database']} CPU")
        per_event.plot(x, [s["verify_cpu_s"] / s["events"] * 1e6 for s in sizes], "o-", label=run["database"])
        if all("verify_peak_mb" in s for s in sizes):
            memory.plot(x, [s["verify_peak_mb"] for s in sizes], "o-", label=run["database"])
    probe.axhline(1, color="grey", linewidth=0.8)
    probe.set(xscale="log", xlabel="events in the database", ylabel="time per recorded event / at smallest size", title="Recording one event", ylim=(0, None))
    replay.set(xscale="log", yscale="log", xlabel="events in the database", ylabel="seconds", title="rapport verify (replay everything)")
    per_event.set(xscale="log", xlabel="events in the database", ylabel="CPU µs per event", title="rapport verify per event", ylim=(0, None))
    memory.set(xscale="log", xlabel="events in the database", ylabel="MB resident (peak)", title="rapport verify's memory", ylim=(0, None))
    for ax in (probe, replay, per_event, memory):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
