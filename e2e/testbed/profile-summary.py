#!/usr/bin/env python3
"""Where the JVMs' CPU time went, from profile-jvms.sh's collapsed stacks.

    profile-summary.py [--interval-ns N] [--rows R] [--top N] [--frames RE ...] LABEL=FILE[,FILE...] ...

Each LABEL sums its files (one per node). Printed per label: CPU seconds in
all; by activity (serving requests, waiting for them, the other threads,
garbage collection, JIT compilers: the rows of docs/benchmarks.md's table
"The source's CPU by thread"); by thread group (a thread's name with its
numbers taken out: `ReadStage-3` and `ReadStage-7` are `ReadStage-N`); and
for each --frames regular expression the CPU time of the stacks with a
frame matching it. With --rows, every figure is also given in microseconds
per row.
"""

import argparse
import collections
import re
import sys

# Frames of a thread that waits for work rather than doing it: Cassandra's
# shared request pool spinning before it parks (`SEPWorker.doWaitSpin`), and
# any thread parked or in `Object.wait`.
WAITING = ("doWaitSpin", "Unsafe.park", "Object.wait")
REQUEST_THREADS = ("Native-Transport-Requests", "ReadStage", "epollEventLoopGroup")


def read(paths):
    """[(thread group, frames, samples)] of every stack in paths."""
    stacks = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                frames = stack.split(";")
                thread = frames[0]
                if thread.startswith("[") and thread.endswith("]"):
                    name = re.sub(r" tid=\d+\]$", "]", thread)[1:-1]
                    group = re.sub(r"\d+", "N", name)
                    frames = frames[1:]
                else:
                    group = "(no thread)"
                stacks.append((group, frames, int(count)))
    return stacks


def recorded_interval(paths):
    """The sampling interval profile-jvms.sh wrote beside the files: one
    for all of them, else 1 ms."""
    seen = set()
    for path in paths:
        try:
            with open(path + ".interval-ns", encoding="utf-8") as f:
                seen.add(int(f.read().strip()))
        except FileNotFoundError:
            seen.add(1_000_000)
    if len(seen) > 1:
        sys.exit(f"the files were sampled at different intervals ({sorted(seen)} ns): give --interval-ns")
    return seen.pop()


def activity(group, frames):
    """What a stack's thread was doing."""
    if "Compiler" in group or group.startswith("CN "):
        return "JIT compilers"
    # Digits are Ns in a group's name: G1's threads are "GN ...".
    if group.startswith(("GC ", "GN ")):
        return "garbage collection"
    if any(w in frame for frame in frames for w in WAITING):
        return "waiting (spinning, parked, woken)"
    if group.startswith(REQUEST_THREADS):
        return "serving requests"
    return "other threads"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--interval-ns",
        type=int,
        default=None,
        help="CPU time a sample stands for (default: what profile-jvms.sh recorded beside the files, else 1 ms)",
    )
    p.add_argument("--rows", type=float, default=None, help="rows the profiled run read, for µs a row")
    p.add_argument("--top", type=int, default=12, help="thread groups to list")
    p.add_argument("--frames", action="append", default=[], help="a regular expression over frame names")
    p.add_argument("sets", nargs="+", metavar="LABEL=FILE[,FILE...]")
    args = p.parse_args()

    interval_ns = args.interval_ns

    def fmt(samples):
        seconds = samples * interval_ns / 1e9
        text = f"{seconds:8.2f} s"
        if args.rows:
            text += f" {seconds * 1e6 / args.rows:7.2f} µs/row"
        return text

    for spec in args.sets:
        label, _, files = spec.partition("=")
        if not files:
            sys.exit(f"expected LABEL=FILE[,FILE...], got {spec!r}")
        paths = files.split(",")
        if args.interval_ns is None:
            interval_ns = recorded_interval(paths)
        stacks = read(paths)
        total = sum(n for _, _, n in stacks)

        def line(samples, name):
            print(f"   {fmt(samples)}  {100 * samples / max(total, 1):5.1f} %  {name}")

        print(f"== {label}: {fmt(total)} of CPU ({total} samples)")
        print("  by activity:")
        by_activity = collections.Counter()
        for group, frames, n in stacks:
            by_activity[activity(group, frames)] += n
        for name, n in by_activity.most_common():
            line(n, name)
        print("  by thread group:")
        groups = collections.Counter()
        for group, _, n in stacks:
            groups[group] += n
        for name, n in groups.most_common(args.top):
            line(n, name)
        for expr in args.frames:
            pattern = re.compile(expr)
            line(sum(n for _, frames, n in stacks if any(pattern.search(f) for f in frames)), f"stacks through /{expr}/")


if __name__ == "__main__":
    main()
