#!/usr/bin/env python3
"""Stop-path latencies of the runner, measured end to end on real processes.

  request: `kill -TERM` -> the job sees the request (wall clock read in the job), for a
           job blocked on the shutdown pollable and for one polling the flag.
  forced:  grace deadline -> the runner process has exited, for a job spinning in a loop
           and for one blocked in a host call (sleep). The deadline is taken as the
           instant the signal was sent plus --grace, so the figure also includes the
           signal's delivery (tens of microseconds).

Usage: bench/stop_latency.py RUNNER TESTJOB_WASM [TRIALS]
(TESTJOB_WASM is tests/jobs built for wasm32-wasip2: target/wasm32-wasip2/release/testjob.wasm)
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

GRACE_S = 0.2


def start(runner, job, state, mode, grace):
    proc = subprocess.Popen(
        [runner, "--state-dir", state, "--grace", grace, job, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"unexpected first line {line!r}"
    return proc


def request_latency(runner, job, state, mode):
    proc = start(runner, job, state, mode, "60s")
    sent = time.time_ns()
    os.kill(proc.pid, signal.SIGTERM)
    line = proc.stdout.readline()
    seen = int(line.split("unix_ns=")[1].split()[0])
    assert proc.wait() == 75
    return (seen - sent) / 1e6


def forced_latency(runner, job, state, mode):
    proc = start(runner, job, state, mode, f"{int(GRACE_S * 1000)}ms")
    sent = time.monotonic_ns()
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait()
    exited = time.monotonic_ns()
    assert code == 143, code
    return (exited - sent) / 1e6 - GRACE_S * 1000


def report(name, samples):
    samples = sorted(samples)
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print(
        f"{name:<34} n={len(samples):<4} p50={p(0.5):7.3f} ms  p99={p(0.99):7.3f} ms  "
        f"min={samples[0]:7.3f} ms  max={samples[-1]:7.3f} ms  mean={statistics.mean(samples):7.3f} ms"
    )


def main():
    runner, job = sys.argv[1], sys.argv[2]
    trials = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    print(f"runner={runner} RUST_BACKTRACE={os.environ.get('RUST_BACKTRACE', '')!r} trials={trials}")
    with tempfile.TemporaryDirectory() as state:
        for mode in ["wait", "flag"]:
            report(f"kill -TERM -> job sees it ({mode})", [request_latency(runner, job, state, mode) for _ in range(trials)])
        for mode in ["spin", "sleep"]:
            report(f"deadline -> runner exit ({mode})", [forced_latency(runner, job, state, mode) for _ in range(trials)])


if __name__ == "__main__":
    main()
