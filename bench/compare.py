#!/usr/bin/env python3
"""Two runner builds side by side, interleaved trial by trial, on the runner-only figures of
bench.py's start, request and deadline sections: cached and precompiled start of the hello
command, `kill -TERM` -> the job sees the request, and grace deadline -> exit. For a change
to a hot path (start-up, the signal and stop path), against the commit before it:

  python3 bench/compare.py --base BASE/runner --new NEW/runner --startup .../startup \\
      --hello .../command.wasm --testjob .../testjob.wasm --work DIR

Prints a Markdown table: each figure's median and p99 for both builds, and new / base.
Trials alternate between the builds, so that a machine that slows down slows both.
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (beside this file)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ["base", "new", "startup", "hello", "testjob", "work"]:
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--start-trials", type=int, default=60)
    parser.add_argument("--stop-trials", type=int, default=100)
    args = parser.parse_args()
    builds = {"base": args.base, "new": args.new}

    # A harness per build, each in a directory of its own (state, compiled-job cache).
    harnesses = {
        build: bench.Bench(
            argparse.Namespace(
                runner=runner, startup=args.startup, testjob=args.testjob, work=os.path.join(args.work, build)
            )
        )
        for build, runner in builds.items()
    }
    for harness in harnesses.values():
        harness.setup()
    harness = harnesses["base"]
    rows = {}

    # Start: each build's cached and precompiled hello, round-robin.
    variants = {}
    for build, runner in builds.items():
        work = harnesses[build].work
        cache = os.path.join(work, "cache")
        cwasm = os.path.join(work, "hello.cwasm")
        bench.run_quiet([runner, "compile", args.hello, "-o", cwasm], harness.env)
        state = os.path.join(work, "state")
        bench.check_run([runner, "--state-dir", state, "--cache-dir", cache, args.hello], harness.env, "hello")
        variants[f"cached start, first output ({build})"] = (
            lambda trial, runner=runner, state=state, cache=cache: [
                runner, "--state-dir", state, "--cache-dir", cache, args.hello
            ]
        )
        variants[f"precompiled start, first output ({build})"] = (
            lambda trial, runner=runner, state=state, cwasm=cwasm: [
                runner, "--state-dir", state, "--no-cache", cwasm
            ]
        )
    harness.log(f"start: {len(variants)} variants x {args.start_trials} trials, interleaved")
    for name, figures in harness.interleaved(variants, args.start_trials, "hello").items():
        rows[name] = figures["first"]
        rows[name.replace("first output", "peak RSS MiB")] = figures["rss"]

    # Stop: the request and the forced stop, alternating builds trial by trial.
    stops = [
        ("request seen, polling the flag", "flag", "60s"),
        ("request seen, blocked in poll", "wait", "60s"),
        ("deadline -> exit, spinning", "spin", "100ms"),
        ("deadline -> exit, sleeping", "sleep", "100ms"),
    ]
    for name, mode, grace in stops:
        harness.log(f"{name}: {args.stop_trials} trials per build, alternating")
        samples = {build: [] for build in builds}
        for _ in range(args.stop_trials):
            for build in builds:
                proc = harnesses[build].start_testjob(mode, grace)
                if mode in ("flag", "wait"):
                    sent = time.time_ns()
                    os.kill(proc.pid, signal.SIGTERM)
                    seen = int(proc.stdout.readline().split("unix_ns=")[1].split()[0])
                    expected, figure = 75, (seen - sent) / 1e6
                    code = proc.wait()
                else:
                    sent = time.monotonic_ns()
                    os.kill(proc.pid, signal.SIGTERM)
                    code = proc.wait()
                    expected, figure = 143, (time.monotonic_ns() - sent) / 1e6 - 100
                if code != expected:
                    sys.exit(f"bench: {build} testjob {mode} exited {code}, not {expected}")
                samples[build].append(figure)
        for build in builds:
            rows[f"{name} ({build})"] = bench.summary(samples[build])

    print("| figure | base p50 | base p99 | new p50 | new p99 | new / base (p50) |")
    print("|---|---|---|---|---|---|")
    names = [name[: -len(" (base)")] for name in rows if name.endswith(" (base)")]
    for name in names:
        base, new = rows[f"{name} (base)"], rows[f"{name} (new)"]
        print(
            f"| {name} | {base['median']:.3f} | {base['p99']:.3f} | {new['median']:.3f} | {new['p99']:.3f} "
            f"| {new['median'] / base['median']:.2f}x |"
        )


if __name__ == "__main__":
    main()
