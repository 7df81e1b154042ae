#!/usr/bin/env python3
"""Side by side: the same Google Benchmark program from two builds (say, before
and after a change), run in alternating rounds by this one script so that both
see the same machine and the same load. Prints, per benchmark, the median
wall time of each build over the rounds and the ratio old / new (above 1: the
new build is faster).

    bench/compare_builds.py --old OLD_BUILD/bench/bench_packed_model \
        --new build/bench/bench_packed_model --filter '^packed_cpu/' --rounds 5

Numbers only mean something beside each other; the machine and its load go
with them (bench/RESULTS.md).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run(binary, filt, min_time):
    cmd = [binary, f"--benchmark_filter={filt}", "--benchmark_format=json",
           f"--benchmark_min_time={min_time}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    times = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("error_occurred"):
            sys.exit(f"compare_builds: {binary}: {b['name']}: {b.get('error_message')}")
        times[b["name"]] = b["real_time"] if b["time_unit"] == "ms" else b["real_time"] / {"us": 1e3, "ns": 1e6, "s": 1e-3}[b["time_unit"]]
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="benchmark program of the old build")
    ap.add_argument("--new", required=True, help="benchmark program of the new build")
    ap.add_argument("--filter", default=".", help="--benchmark_filter regex")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (each build runs once a round)")
    ap.add_argument("--min-time", default="0.5", help="--benchmark_min_time per benchmark and run")
    a = ap.parse_args()
    for b in (a.old, a.new):
        if not os.access(b, os.X_OK):
            sys.exit(f"compare_builds: {b}: not an executable")
    if a.rounds < 1:
        sys.exit("compare_builds: --rounds: expected an integer >= 1")
    old, new = {}, {}
    for r in range(a.rounds):
        # Alternate which build goes first, so neither always runs warm.
        order = [(a.old, old), (a.new, new)] if r % 2 == 0 else [(a.new, new), (a.old, old)]
        for binary, acc in order:
            for name, t in run(binary, a.filter, a.min_time).items():
                acc.setdefault(name, []).append(t)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"| benchmark | old (ms, median of {a.rounds}) | new (ms) | old / new |")
    print("| --- | ---: | ---: | ---: |")
    for name in old:
        if name not in new:
            continue
        o, n = statistics.median(old[name]), statistics.median(new[name])
        print(f"| {name} | {o:.3f} | {n:.3f} | {o / n:.2f}x |")


if __name__ == "__main__":
    main()
