#!/usr/bin/env python3
"""The runner's benchmark: measures the runner beside `wasmtime run` and native code, and
beside another build of itself (the baseline), in one run on one machine, and writes the
figures to a Markdown file (BENCHMARKS.md).

Run it through `bash bench/run`, which builds everything this needs (the baseline runner
at a given commit included) and installs the peers. Sections (all by default; pick some
with --only):

  start    spawn -> the first byte of the job's output, spawn -> exit, and peak RSS, for a
           hello-world wasi:cli/command: runner first run, cached, precompiled; wasmtime
           run without cache, cached, precompiled. Trials are interleaved.
  request  `kill -TERM` -> the job sees the request (the wall clock the job reads, against
           the one read just before the kill): a job polling the flag, one blocked in poll
           on the shutdown pollable.
  deadline grace deadline -> the runner process has exited, for a job spinning in a loop
           and one blocked in a host call (sleep); the deadline is taken as the instant
           the signal was sent plus --grace.
  compute  primes (hyperfine): the example job under the runner, the same counting code
           as a plain command under the runner and under wasmtime run with epoch
           interruption on and off, and built natively. Current build only, once.
  output   the job's output through the runner (a million lines to stdout or stderr, text
           or JSON logs) and its progress reports (ten million, without and with
           --metrics-addr or ARGO_PROGRESS_FILE). Current build only, once.
  commit   checkpoint commit latency as the job sees it, against the raw protocol
           (write, fsync, rename, directory fsync) done by a native program, in the same
           directory.
  s3       checkpoint commit latency with the state in a bucket of s3s-fs (an
           S3-compatible server, on loopback), against the local store, alternated.
  python   a Python job's start: first run, cached, precompiled; and a Python command's
           cached start under the runner and under `wasmtime run`.
  js       a JavaScript job's start (first run, cached, precompiled), beside the Python
           job's when both sections run; and (first repetition only, current build only)
           the time `guest-sdk/js/build-job.mjs` takes to build examples/js-wordcount, and
           the wordcount example in Rust, Python and JavaScript on the same 4.4 MB of text,
           hyperfine.
  core     core modules (wasm32-wasip1), the same .wasm under the runner and under
           `wasmtime run`: a hello world's cached and precompiled start (spawn -> first
           output, exit, peak RSS), interleaved; and (first repetition only, current build
           only) the primes count as a plain wasip1 program, hyperfine, beside the C
           example job.
  container the image deploy/build-image builds (static release runner, primes), run by
           runc with a bind-mounted state directory: `runc kill ID TERM` -> `runc run`
           has exited (75, the job suspended), once the job has saved a checkpoint; and
           the sizes of the static runner and of the image.

Every section but compute runs --repetitions times (3 by default), the repetitions of
all sections taking turns; within one, the current build, the baseline and the control
(the baseline's source built again elsewhere, --control-runner) take turns trial by
trial. The report gives each figure as the median of its repetitions and their min-max,
the current build beside the baseline with their ratio, and marks a figure worse or
better only when the two builds' repetitions do not overlap and differ by more than
their own spread and than the control differs from the baseline (see `verdict`).

Children run without RUST_BACKTRACE, as in production (it slows every trap path).
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

TMPFS_ROW = "runner, cached, state directory on tmpfs (no fsync cost; for comparison)"
NODIVL_ROW = "native, with LLVM's 32-bit division fast path off (`-C target-feature=-idivq-to-divl`)"
FIRST_ROW = "runner, first run (compiles, fills the cache)"
CACHED_ROW = "runner, cached"
PRECOMPILED_ROW = "runner, precompiled (`runner compile`)"
WASMTIME_CACHED_ROW = "wasmtime run, cached"
WASMTIME_PRECOMPILED_ROW = "wasmtime run, precompiled (`wasmtime compile`)"
CORE_WASMTIME_ROW = "wasmtime run count-primes.wasm, epoch interruption on (`-W timeout=1h`)"
CORE_RUNNER_ROW = "runner count-primes.wasm (a plain wasip1 program)"
SECTIONS = ["start", "request", "deadline", "compute", "output", "commit", "s3", "python", "js", "core", "container"]
JS_BUILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guest-sdk", "js", "build-job.mjs")
JS_WORDCOUNT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "js-wordcount", "wordcount.js")
CONTAINER_USER = 65532
KIB = 1024
MIB = 1024 * 1024
# The peers (wasmtime run, native programs) are measured once, beside the current build.
PEER = "peer"
# A figure is marked worse or better only if it moved by more than this too.
FLOOR = 0.02


# ---------------------------------------------------------------------------- statistics


def percentile(samples, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(samples):
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "p25": percentile(samples, 0.25),
        "p75": percentile(samples, 0.75),
        "p99": percentile(samples, 0.99),
        "min": min(samples),
        "max": max(samples),
    }


def fmt(value, digits=2):
    return f"{value:.{digits}f}"


def ratio(a, b):
    return a / b if b else float("nan")


def of_reps(summaries, stat):
    """One figure (`stat` of each repetition's samples) over the repetitions."""
    return [s[stat] for s in summaries]


def rep_cell(values, digits=2):
    """The median of a figure's repetitions, and their min-max if there are several."""
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(statistics.median(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def verdict(current, baseline, control=None):
    """`worse`, `better` or `same` for a figure where more is worse, from its values in
    each repetition of the two builds (and of the control: the baseline's source built
    again, in another directory). Worse only when every repetition of the current build is
    worse than every repetition of the baseline (with three each, chance alone does that
    one time in twenty), and of the control, and the medians differ by more than the
    larger of the two builds' own spread over the repetitions, by more than FLOOR, and by
    more than twice what the control differed from the baseline in any repetition;
    better likewise.

    The control is there because two builds of one source are not one program: where the
    source tree lies changes the symbols' hashes, so how the linker lays the code out,
    and a path as short as the forced stop, which faults in code it never ran before,
    moves by a tenth or more with it. A run of the commit against itself showed the
    checkout's build 8% slower than the baseline and the control 8% faster. The current
    build has a layout of its own too, which is why the bound is twice the control's
    distance: one control is one draw of that noise, and the current build's is another."""
    if len(current) < 2 or len(baseline) < 2:
        return "same"
    baselines = baseline + (control or [])
    spread = max(max(current) - min(current), max(baseline) - min(baseline))
    diff = statistics.median(current) - statistics.median(baseline)
    bound = max(spread, FLOOR * statistics.median(baseline))
    if control:
        bound = max(bound, 2 * max(abs(c - b) for c, b in zip(control, baseline)))
    if min(current) > max(baselines) and diff > bound:
        return "worse"
    if max(current) < min(baselines) and -diff > bound:
        return "better"
    return "same"


# ---------------------------------------------------------------------------- processes


def reread(paths):
    """Drops each file's pages from the page cache and reads them back, so that every
    file a measured run maps came into the page cache the same way (a fault maps as many
    pages as the cache's folio holds: a file just written and one read back measure
    differently, in time and in peak RSS)."""
    for path in paths:
        with open(path, "rb") as file:
            os.fsync(file.fileno())
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while file.read(1 << 20):
                pass


def wordcount_text(seed, lines):
    """The text of tests/integration/resume.rs's `write_text`: `lines` lines of ten words
    `wN` (N below 500), from a linear congruential generator seeded with `seed`."""
    state, out = seed, []
    for _ in range(lines):
        words = []
        for _ in range(10):
            state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            words.append(f"w{(state >> 33) % 500}")
        out.append(" ".join(words) + ".\n")
    return "".join(out)


def child_env():
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)
    env.pop("RUST_LIB_BACKTRACE", None)
    env.pop("RUNNER_CACHE_DIR", None)
    return env


def spawn_timed(startup, argv, env, stderr_path):
    """Runs argv once through the native probe (bench/native/src/bin/startup.rs). Returns
    (ms to the first byte of output, ms to exit, peak RSS in KiB, stdout, exit status)."""
    result = subprocess.run([startup, stderr_path, *argv], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench: {startup} failed: {result.stderr.strip()}")
    header, _, output = result.stdout.partition("\n")
    first_ns, exit_ns, rss_kib, code = (int(field) for field in header.split())
    return first_ns / 1e6, exit_ns / 1e6, rss_kib, output, code


def check_run(argv, env, expect_in_output):
    """Runs argv once and fails loudly unless it exits 0 printing expect_in_output."""
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0 or expect_in_output not in result.stdout:
        sys.exit(
            f"bench: `{' '.join(argv)}` exited {result.returncode} printing {result.stdout[:200]!r}, "
            f"expected {expect_in_output!r}; its stderr ends:\n{result.stderr[-2000:]}"
        )
    return result.stdout


def run_quiet(argv, env=None):
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench: `{' '.join(argv)}` exited {result.returncode}:\n{result.stderr[-2000:]}")
    return result.stdout


def parse_commits(output):
    line = next(line for line in output.splitlines() if line.startswith("commit_ns"))
    return [int(value) / 1e6 for value in line.split()[1:]]


def wait_listening(port):
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("bench: s3s-fs did not listen within 30 s")
            time.sleep(0.01)


# ---------------------------------------------------------------------------- builds


class Build:
    """One runner build under measure: its binaries and its own state and cache."""

    def __init__(self, name, runner, static_runner, image_layout, revision, work):
        self.name = name
        self.runner = runner
        self.static_runner = static_runner
        self.image_layout = image_layout
        self.revision = revision
        self.work = os.path.join(work, name)
        self.state = os.path.join(self.work, "state")
        self.cache = os.path.join(self.work, "cache")

    def run(self, *args, state=None):
        return [self.runner, "--state-dir", state or self.state, *args]

    def cached(self, *args):
        return self.run("--cache-dir", self.cache, *args)


def turns(builds, trial):
    """The builds in the order of one trial: rotating, so that each goes first, and each
    follows each other, as often as the others."""
    k = trial % len(builds)
    return builds[k:] + builds[:k]


# ---------------------------------------------------------------------------- sections


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.env = child_env()
        self.stderr = os.path.join(self.work, "stderr.txt")
        # section -> row -> build name (or PEER) -> metric -> [summary of each repetition]
        self.data = {}
        self.extra = {}
        self.wasmtime_cache_config = os.path.join(self.work, "wasmtime-cache.toml")
        self.builds = [
            Build("current", args.runner, args.static_runner, args.image_layout, args.current_rev, self.work)
        ]
        if args.baseline_runner:
            self.builds.append(
                Build(
                    "baseline", args.baseline_runner, args.baseline_static_runner, args.baseline_image_layout,
                    args.baseline_rev, self.work,
                )
            )
        if args.control_runner:
            self.builds.append(
                Build(
                    "control", args.control_runner, args.control_static_runner, args.control_image_layout,
                    f"{args.baseline_rev}, built again", self.work,
                )
            )
        self.current = self.builds[0]
        self.prepared = set()

    def add(self, section, row, build, metric, samples):
        rows = self.data.setdefault(section, {})
        rows.setdefault(row, {}).setdefault(build, {}).setdefault(metric, []).append(summary(samples))

    def wasmtime(self, *args, cache=True):
        if cache:
            return [self.args.wasmtime, "run", "-C", f"cache-config={self.wasmtime_cache_config}", *args]
        return [self.args.wasmtime, "run", "-C", "cache=n", *args]

    def log(self, message):
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def setup(self):
        # The programs too: a runner binary's start and exit (its forced stop included)
        # and peak RSS depend on how its file came into the page cache. The same binary
        # measured 11.8 MiB and a 1.7 ms forced stop in one run, 12.8 MiB and 1.5 ms in
        # another; a just-built one and a kept one differed by up to 1.2x either way, a
        # difference the control did not show. Dropped and read back, two runners of
        # different commits measured 15.3 and 15.1 MiB.
        reread(
            [path for build in self.builds for path in (build.runner, build.static_runner) if path]
            + [path for path in (self.args.wasmtime, self.args.startup) if path]
        )
        if os.path.exists(self.work):
            shutil.rmtree(self.work)
        os.makedirs(self.work)
        for build in self.builds:
            os.makedirs(build.work)
        with open(self.wasmtime_cache_config, "w") as config:
            config.write(f'[cache]\ndirectory = "{os.path.join(self.work, "wasmtime-cache")}"\n')

    def once(self, what):
        """True the first time `what` is asked for: the preparations of a section."""
        if what in self.prepared:
            return False
        self.prepared.add(what)
        return True

    # -- start

    def interleaved(self, section, variants, trials, expect):
        """variants: (row, build) -> function(trial) returning argv. Runs trials
        round-robin (in reverse order every other trial) and adds the samples."""
        samples = {key: {"first": [], "exit": [], "rss": []} for key in variants}
        keys = list(variants)
        for trial in range(trials):
            for key in turns(keys, trial):
                first, exited, rss, output, code = spawn_timed(
                    self.args.startup, variants[key](trial), self.env, self.stderr
                )
                if code != 0 or expect not in output:
                    with open(self.stderr, errors="replace") as err:
                        detail = err.read()[-2000:]
                    sys.exit(f"bench: {key} exited {code} printing {output[:200]!r}; its stderr ends:\n{detail}")
                samples[key]["first"].append(first)
                samples[key]["exit"].append(exited)
                samples[key]["rss"].append(rss / 1024)
        for (row, build), kinds in samples.items():
            for metric, values in kinds.items():
                self.add(section, row, build, metric, values)

    def start(self, rep):
        hello, expect = self.args.hello, "hello"
        trials = self.args.start_trials
        wasmtime_cwasm = os.path.join(self.work, "hello-wasmtime.cwasm")
        if self.once("start"):
            for build in self.builds:
                run_quiet([build.runner, "compile", hello, "-o", os.path.join(build.work, "hello.cwasm")], self.env)
                check_run(build.cached(hello), self.env, expect)
            run_quiet([self.args.wasmtime, "compile", hello, "-o", wasmtime_cwasm], self.env)
            check_run(self.wasmtime(hello), self.env, expect)
        compiling, loading = {}, {}
        shm_states = []
        for build in self.builds:
            first_caches = os.path.join(build.work, f"cache-first-{rep}")
            compiling[(FIRST_ROW, build.name)] = lambda trial, b=build, d=first_caches: b.run(
                "--cache-dir", os.path.join(d, str(trial)), hello
            )
            loading[(CACHED_ROW, build.name)] = lambda trial, b=build: b.cached(hello)
            loading[(PRECOMPILED_ROW, build.name)] = lambda trial, b=build: b.run(
                "--no-cache", os.path.join(b.work, "hello.cwasm")
            )
            if os.path.isdir("/dev/shm"):
                # What the state directory's fsyncs cost: the runner takes the job's lock
                # and writes a fencing number (fsynced) even for a plain command.
                shm = tempfile.mkdtemp(prefix="runner-bench-state-", dir="/dev/shm")
                shm_states.append(shm)
                loading[(TMPFS_ROW, build.name)] = lambda trial, b=build, s=shm: b.run(
                    "--cache-dir", b.cache, hello, state=s
                )
        compiling[("wasmtime run, no cache (`-C cache=n`)", PEER)] = lambda trial: self.wasmtime(hello, cache=False)
        loading[(WASMTIME_CACHED_ROW, PEER)] = lambda trial: self.wasmtime(hello)
        loading[(WASMTIME_PRECOMPILED_ROW, PEER)] = lambda trial: self.wasmtime(
            "--allow-precompiled", wasmtime_cwasm, cache=False
        )
        # Two blocks, so that a compiling run does not heat the machine just before a
        # loading one.
        self.log(f"start #{rep + 1}: {len(compiling) + len(loading)} variants x {trials} trials, interleaved")
        self.interleaved("start", compiling, trials, expect)
        self.interleaved("start", loading, trials, expect)
        for shm in shm_states:
            shutil.rmtree(shm, ignore_errors=True)
        for build in self.builds:
            shutil.rmtree(os.path.join(build.work, f"cache-first-{rep}"), ignore_errors=True)

    # -- core modules

    def core(self, rep):
        hello, expect = self.args.core_hello, "hello"
        build = self.current
        runner_cwasm = os.path.join(build.work, "core-hello.cwasm")
        wasmtime_cwasm = os.path.join(self.work, "core-hello-wasmtime.cwasm")
        if self.once("core"):
            run_quiet([build.runner, "compile", hello, "-o", runner_cwasm], self.env)
            check_run(build.cached(hello), self.env, expect)
            run_quiet([self.args.wasmtime, "compile", hello, "-o", wasmtime_cwasm], self.env)
            check_run(self.wasmtime(hello), self.env, expect)
        variants = {
            (CACHED_ROW, build.name): lambda trial: build.cached(hello),
            (PRECOMPILED_ROW, build.name): lambda trial: build.run("--no-cache", runner_cwasm),
            (WASMTIME_CACHED_ROW, PEER): lambda trial: self.wasmtime(hello),
            (WASMTIME_PRECOMPILED_ROW, PEER): lambda trial: self.wasmtime(
                "--allow-precompiled", wasmtime_cwasm, cache=False
            ),
        }
        trials = self.args.start_trials
        self.log(f"core #{rep + 1}: start, {len(variants)} variants x {trials} trials, interleaved")
        self.interleaved("core", variants, trials, expect)
        if rep > 0:
            return
        limit = str(self.args.primes_limit)
        expect = f"primes below {limit}:"
        commands = {
            CORE_WASMTIME_ROW: self.wasmtime("-W", "timeout=3600s", self.args.core_count_primes, limit),
            CORE_RUNNER_ROW: build.cached(self.args.core_count_primes, limit),
            "runner c-primes.wasm (the C example job over runner_job_v1: a checkpoint a second)": build.cached(
                "--job-id", "bench-c-primes", "--start-over", self.args.c_primes, limit
            ),
        }
        self.same_answer(commands, expect)
        self.log(f"core: hyperfine, {self.args.compute_runs} rounds of {len(commands)} commands, LIMIT={limit}")
        times = self.hyperfine_rounds(commands, self.args.compute_runs)
        for name, samples in times.items():
            self.add("core-compute", name, PEER, "ms", samples)
        self.extra["core_compute_rounds"] = list(times.values())

    # -- stop request and forced stop

    def start_testjob(self, build, mode, grace):
        proc = subprocess.Popen(
            build.cached("--grace", grace, self.args.testjob, mode),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=self.env,
            text=True,
        )
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            sys.exit(f"bench: testjob {mode} under the {build.name} runner: expected `ready`, got {line!r}")
        return proc

    def request(self, rep):
        trials = self.args.request_trials
        for mode, name in [("flag", "polling the flag"), ("wait", "blocked in poll on the pollable")]:
            self.log(f"request #{rep + 1}: {name}, {trials} trials per build")
            samples = {build.name: [] for build in self.builds}
            for trial in range(trials):
                for build in turns(self.builds, trial):
                    proc = self.start_testjob(build, mode, "60s")
                    sent = time.time_ns()
                    os.kill(proc.pid, signal.SIGTERM)
                    line = proc.stdout.readline()
                    seen = int(line.split("unix_ns=")[1].split()[0])
                    if proc.wait() != 75:
                        sys.exit(f"bench: testjob {mode} did not exit 75 after the request")
                    samples[build.name].append((seen - sent) / 1e6)
            for build, values in samples.items():
                self.add("request", name, build, "ms", values)

    def deadline(self, rep):
        trials, grace_ms = self.args.deadline_trials, 100
        for mode, name in [("spin", "spinning in a loop"), ("sleep", "blocked in a host call (sleep)")]:
            self.log(f"deadline #{rep + 1}: {name}, {trials} trials per build")
            samples = {build.name: [] for build in self.builds}
            for trial in range(trials):
                for build in turns(self.builds, trial):
                    proc = self.start_testjob(build, mode, f"{grace_ms}ms")
                    sent = time.monotonic_ns()
                    os.kill(proc.pid, signal.SIGTERM)
                    code = proc.wait()
                    exited = time.monotonic_ns()
                    if code != 143:
                        sys.exit(f"bench: testjob {mode} exited {code}, not 143, after the grace period")
                    samples[build.name].append((exited - sent) / 1e6 - grace_ms)
            for build, values in samples.items():
                self.add("deadline", name, build, "ms", values)

    # -- compute

    def compute(self, rep):
        if rep > 0:
            return
        limit = str(self.args.primes_limit)
        expect = f"primes below {limit}:"
        build = self.current
        commands = {
            "native (count-primes)": [self.args.count_primes_native, limit],
            NODIVL_ROW: [self.args.count_primes_native_nodivl, limit],
            "wasmtime run count-primes.wasm, epoch interruption off": self.wasmtime(self.args.count_primes_wasm, limit),
            "wasmtime run count-primes.wasm, epoch interruption on (`-W timeout=1h`)": self.wasmtime(
                "-W", "timeout=3600s", self.args.count_primes_wasm, limit
            ),
            "runner count-primes.wasm (a plain command)": build.cached(self.args.count_primes_wasm, limit),
            "runner primes.wasm (the example job: SDK batch, a checkpoint a second)": build.cached(
                "--job-id", "bench-primes", "--start-over", self.args.primes, limit
            ),
        }
        self.extra["primes_answer"] = self.same_answer(commands, expect)
        # The checks above were the warm-up (and filled the caches).
        self.log(f"compute: hyperfine, {self.args.compute_runs} rounds of {len(commands)} commands, LIMIT={limit}")
        times = self.hyperfine_rounds(commands, self.args.compute_runs)
        for name, samples in times.items():
            self.add("compute", name, PEER, "ms", samples)
        self.extra["compute_rounds"] = list(times.values())

    def same_answer(self, commands, expect):
        """Runs each of `commands` (name -> argv) once (a warm-up, which also fills the
        compiled-code caches) and returns the line starting with `expect` they all print;
        exits if they disagree."""
        answers = set()
        for argv in commands.values():
            output = check_run(argv, self.env, expect)
            answers.add(next(line for line in output.splitlines() if line.startswith(expect)))
        if len(answers) != 1:
            sys.exit(f"bench: the programs disagree: {sorted(answers)}")
        return answers.pop()

    def hyperfine_rounds(self, commands, rounds):
        """Runs `commands` (name -> argv) through hyperfine, `rounds` times each, one
        hyperfine call per round in which each runs once: the commands take turns, so that
        the machine drifting does not land on one of them. Returns name -> milliseconds."""
        export = os.path.join(self.work, "hyperfine.json")
        times = {name: [] for name in commands}
        for _ in range(rounds):
            hyperfine = [self.args.hyperfine, "-N", "--runs", "1", "--export-json", export]
            for name, argv in commands.items():
                hyperfine += ["-n", name, " ".join(argv)]
            subprocess.run(hyperfine, env=self.env, check=True, stdout=sys.stderr)
            with open(export) as file:
                for result in json.load(file)["results"]:
                    times[result["command"]] += [t * 1000 for t in result["times"]]
        return times

    # -- the job's output and progress

    def output(self, rep):
        if rep > 0:
            return
        lines, reports = str(self.args.output_lines), str(self.args.progress_reports)
        build = self.current
        argo = os.path.join(self.work, "argo-progress")

        def job(*args, env=()):
            return ["env", *env, *build.cached("--job-id", "bench-output", "--start-over", *args)]

        commands = {}
        for stream in ("stdout", "stderr"):
            for logs in ("text", "json"):
                commands[f"{lines} lines to {stream}, {logs} logs"] = job(
                    "--log-format", logs, self.args.testjob, "lines", lines, stream
                )
        commands[f"{reports} progress reports"] = job(self.args.testjob, "progress", reports)
        commands[f"{reports} progress reports, `--metrics-addr`"] = job(
            "--metrics-addr", "127.0.0.1:0", self.args.testjob, "progress", reports
        )
        commands[f"{reports} progress reports, `ARGO_PROGRESS_FILE`"] = job(
            self.args.testjob, "progress", reports, env=[f"ARGO_PROGRESS_FILE={argo}"]
        )
        for argv in commands.values():
            check_run(argv, self.env, "")
        self.log(f"output: hyperfine, {self.args.output_runs} rounds of {len(commands)} commands")
        times = self.hyperfine_rounds(commands, self.args.output_runs)
        for name, samples in times.items():
            self.add("output", name, PEER, "ms", samples)
        self.extra["output_rounds"] = list(times.values())

    # -- checkpoint commit

    def commit(self, rep):
        rounds = 2
        for size, count in self.args.commit_sizes:
            samples = {build.name: [] for build in self.builds}
            raw = []
            self.log(f"commit #{rep + 1}: {size} bytes, {rounds} rounds of {count} commits, each build and raw")
            for turn in range(rounds):
                for build in turns(self.builds, turn):
                    output = check_run(
                        build.cached(
                            "--job-id", f"bench-commit-{size}", "--start-over", self.args.benchjob, "commit",
                            str(size), str(count),
                        ),
                        self.env,
                        "commit_ns",
                    )
                    samples[build.name] += parse_commits(output)
                raw_dir = os.path.join(self.work, "raw-commit", str(size))
                output = check_run([self.args.raw_commit, raw_dir, str(size), str(count)], self.env, "commit_ns")
                raw += parse_commits(output)
            for build, values in samples.items():
                self.add("commit", size, build, "ms", values)
            self.add("commit", size, PEER, "ms", raw)

    # -- checkpoint commit to S3

    def s3(self, rep):
        root = os.path.join(self.work, f"s3-{rep}")
        os.makedirs(os.path.join(root, "bench"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [self.args.s3s_fs, "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench",
             "--secret-key", "bench-secret", root],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port)
            s3_env = dict(
                self.env,
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench-secret",
                AWS_REGION="us-east-1",
            )
            rounds = 2
            for size, count in self.args.s3_sizes:
                self.log(f"s3 #{rep + 1}: {size} bytes, {rounds} rounds of {count} commits each way and build")
                samples = {}
                for turn in range(rounds):
                    for build in turns(self.builds, turn):
                        for where, state, env in [
                            ("local", build.state, self.env),
                            ("s3", f"s3://bench/{build.name}", s3_env),
                        ]:
                            output = check_run(
                                [build.runner, "--state-dir", state, "--cache-dir", build.cache, "--job-id",
                                 f"bench-s3-{size}", "--start-over", self.args.benchjob, "commit", str(size),
                                 str(count)],
                                env,
                                "commit_ns",
                            )
                            samples.setdefault((where, build.name), []).extend(parse_commits(output))
                for (where, build), values in samples.items():
                    self.add("s3", (size, where), build, "ms", values)
        finally:
            server.kill()
            server.wait()
        self.extra["s3s_fs_version"] = run_quiet([self.args.s3s_fs, "--version"]).strip()
        shutil.rmtree(root, ignore_errors=True)

    # -- python

    def python(self, rep):
        self.sdk_start("python", rep, self.args.python_hello, "hello from a Python job")
        command, command_expect = self.args.python_command, "hello from a Python command"
        if command:
            if self.once("python-command"):
                for build in self.builds:
                    check_run(build.cached(command), self.env, command_expect)
                check_run(self.wasmtime(command), self.env, command_expect)
            commands = {("runner, cached", build.name): lambda trial, b=build: b.cached(command) for build in self.builds}
            commands[(WASMTIME_CACHED_ROW, PEER)] = lambda trial: self.wasmtime(command)
            self.interleaved("python-command", commands, self.args.python_trials, command_expect)
            self.extra["python_command_size"] = os.path.getsize(command)

    def sdk_start(self, section, rep, job, expect):
        """A job built with an SDK that embeds an interpreter (Python, JavaScript): its
        first run (compiling), cached and precompiled starts, every build in turn."""
        cwasm = f"hello-{section}.cwasm"
        if self.once(section):
            for build in self.builds:
                run_quiet([build.runner, "compile", job, "-o", os.path.join(build.work, cwasm)], self.env)
                check_run(build.cached("--job-id", f"bench-{section}-fill", job), self.env, expect)

        # A job that completed is not run again: every run is a job of its own.
        def job_id(build, trial, row):
            return f"bench-{section}-{build.name}-{rep}-{row}-{trial}"

        first = {}
        for build in self.builds:
            caches = os.path.join(build.work, f"cache-{section}-first-{rep}")
            first[(FIRST_ROW, build.name)] = lambda trial, b=build, d=caches: b.run(
                "--cache-dir", os.path.join(d, str(trial)), "--job-id", job_id(b, trial, "first"), job
            )
        self.log(
            f"{section} #{rep + 1}: first run x {self.args.python_first_trials}, cached and precompiled x "
            f"{self.args.python_trials} per build"
        )
        self.interleaved(section, first, self.args.python_first_trials, expect)
        for build in self.builds:
            shutil.rmtree(os.path.join(build.work, f"cache-{section}-first-{rep}"), ignore_errors=True)
        rest = {}
        for build in self.builds:
            rest[(CACHED_ROW, build.name)] = lambda trial, b=build: b.cached(
                "--job-id", job_id(b, trial, "cached"), job
            )
            rest[(PRECOMPILED_ROW, build.name)] = lambda trial, b=build: b.run(
                "--no-cache", "--job-id", job_id(b, trial, "precompiled"), os.path.join(b.work, cwasm)
            )
        self.reread_compiled()
        self.interleaved(section, rest, self.args.python_trials, expect)
        self.extra[f"{section}_size"] = os.path.getsize(job)

    # -- js

    def js(self, rep):
        self.sdk_start("js", rep, self.args.js_hello, "hello from a JavaScript job")
        if rep > 0:
            return
        # The build command's time, from the example's source to its component.
        built = os.path.join(self.work, "js-wordcount-built.wasm")
        seconds = []
        for _ in range(3):
            began = time.monotonic()
            run_quiet(["node", JS_BUILD, JS_WORDCOUNT_SOURCE, "-o", built], self.env)
            seconds.append(time.monotonic() - began)
        self.extra["js_build_s"] = seconds
        self.extra["js_wordcount_size"] = os.path.getsize(built)
        # The wordcount twins on the same text: three files of 30,000 lines of ten words.
        text = os.path.join(self.work, "wordcount-input")
        os.makedirs(os.path.join(text, "nested"), exist_ok=True)
        for name, seed in [("a.txt", 1), ("b.txt", 2), ("nested/c.txt", 3)]:
            with open(os.path.join(text, name), "w") as out:
                out.write(wordcount_text(seed, 30_000))
        self.extra["wordcount_input_bytes"] = sum(
            os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(text) for n in names
        )
        build = self.current
        commands = {}
        for name, job in [("Rust", self.args.wordcount), ("Python", self.args.python_wordcount),
                          ("JavaScript", self.args.js_wordcount)]:
            # --start-over: each run counts the whole text again.
            commands[f"{name} (`{os.path.basename(job)}`)"] = build.cached(
                "--job-id", f"bench-wordcount-{name}", "--start-over", "--dir", f"{text}::/input", job, "/input", "3"
            )
        answer = self.same_answer(commands, "900000 words")
        self.log(f"js: hyperfine, {self.args.compute_runs} rounds of the three wordcounts")
        times = self.hyperfine_rounds(commands, self.args.compute_runs)
        for name, samples in times.items():
            self.add("js-wordcount", name, PEER, "ms", samples)
        self.extra["js_wordcount_rounds"] = list(times.values())
        self.extra["wordcount_answer"] = answer

    def reread_compiled(self):
        """Puts every compiled job the runs will map (the builds' caches and `.cwasm`
        files, wasmtime's cache) into the page cache the same way: dropped, then read
        through. A start's peak RSS counts the pages of the file it maps, and how many a
        fault maps depends on how the file's pages came into the page cache (written by a
        compile, or read back): the same start measured 32 MiB from a file its compile
        had just written and 28 MiB once the file had been dropped and read again, and in
        one run the cached and precompiled starts of one build differed by 10% that way,
        stable within the run. Read alike, they measure alike."""
        roots = [os.path.join(self.work, "wasmtime-cache")]
        for build in self.builds:
            roots += [build.cache] + [os.path.join(build.work, f"hello-{s}.cwasm") for s in ("python", "js")]
        for root in roots:
            reread([root] if os.path.isfile(root) else [
                os.path.join(directory, name) for directory, _, names in os.walk(root) for name in names
            ])

    # -- container

    def container(self, rep):
        trials = self.args.container_trials
        base = os.path.join(self.work, f"container-{rep}")
        os.makedirs(base)
        configs = {}
        for build in self.builds:
            bundle = os.path.join(base, f"bundle-{build.name}")
            run_quiet(["umoci", "unpack", "--image", f"{build.image_layout}:bench", bundle])
            with open(os.path.join(bundle, "config.json")) as config_file:
                config = json.load(config_file)
            config["process"]["terminal"] = False
            config["process"]["args"] = ["/runner", "/jobs/primes.wasm"]
            config["root"] = {"path": os.path.join(bundle, "rootfs"), "readonly": True}
            config["mounts"] += [
                {"destination": "/state", "type": "bind", "source": os.path.join(base, "state"),
                 "options": ["rbind", "rw"]},
                {"destination": "/cache", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", f"uid={CONTAINER_USER}", f"gid={CONTAINER_USER}"]},
            ]
            configs[build.name] = config
            if rep == 0:
                layout_bytes = 0
                for directory, _, files in os.walk(os.path.join(build.image_layout, "blobs")):
                    layout_bytes += sum(os.path.getsize(os.path.join(directory, file)) for file in files)
                self.extra.setdefault("container_sizes", {})[build.name] = {
                    "runner": os.path.getsize(build.static_runner),
                    "runner_in_image": os.path.getsize(os.path.join(bundle, "rootfs", "runner")),
                    "layout": layout_bytes,
                }
        self.log(f"container #{rep + 1}: runc kill TERM -> exit, {trials} trials per build")
        from_call = {build.name: [] for build in self.builds}
        from_return = {build.name: [] for build in self.builds}
        state = os.path.join(base, "state")
        for trial in range(trials):
            for build in turns(self.builds, trial):
                shutil.rmtree(state, ignore_errors=True)
                os.makedirs(state)
                os.chown(state, CONTAINER_USER, CONTAINER_USER)
                trial_bundle = os.path.join(base, f"trial-{build.name}-{trial}")
                os.makedirs(trial_bundle)
                with open(os.path.join(trial_bundle, "config.json"), "w") as config_file:
                    json.dump(configs[build.name], config_file)
                name = f"runner-bench-{os.getpid()}-{rep}-{build.name}-{trial}"
                proc = subprocess.Popen(
                    ["runc", "run", "--bundle", trial_bundle, name],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                checkpoint = os.path.join(state, "primes", "checkpoint")
                waited = time.monotonic()
                while not os.path.exists(checkpoint):
                    if proc.poll() is not None or time.monotonic() - waited > 120:
                        proc.kill()
                        sys.exit(f"bench: the container of trial {trial} saved no checkpoint")
                    time.sleep(0.005)
                called = time.monotonic_ns()
                run_quiet(["runc", "kill", name, "TERM"])
                returned = time.monotonic_ns()
                code = proc.wait()
                exited = time.monotonic_ns()
                subprocess.run(["runc", "delete", "--force", name], capture_output=True)
                if code != 75:
                    sys.exit(f"bench: the container exited {code}, not 75, after runc kill TERM")
                from_call[build.name].append((exited - called) / 1e6)
                from_return[build.name].append((exited - returned) / 1e6)
        for build in self.builds:
            self.add("container", "`runc kill` started → `runc run` exited", build.name, "ms", from_call[build.name])
            self.add("container", "`runc kill` returned → `runc run` exited", build.name, "ms", from_return[build.name])
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------- report


def machine(args, bench):
    def first_line(argv):
        if not argv[0]:
            return "(not used)"
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kib = int(info.readline().split()[1])
    fs = first_line(["findmnt", "--noheadings", "--output", "FSTYPE,SOURCE", "--target", args.work])
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {mem_kib / MIB:.1f} GiB",
        f"- Kernel: {platform.system()} {platform.release()}; work directory on {fs} ({args.work})",
    ]
    for build in bench.builds:
        lines.append(f"- {build.name}: release build of `{build.revision or '?'}` ({build.runner})")
    lines += [
        f"- peers: `{first_line([args.wasmtime, '--version'])}`; `{first_line(['rustc', '--version'])}`; "
        f"`{first_line([args.hyperfine, '--version'])}`; Python {platform.python_version()}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"RUST_BACKTRACE unset for every measured process",
    ]
    return lines


class Report:
    """The Markdown report: a table per section for the current build and the peers, one
    comparing the current build with the baseline, and the targets."""

    def __init__(self, bench, args):
        self.bench = bench
        self.args = args
        self.data = bench.data
        self.names = [build.name for build in bench.builds]
        self.lines = []
        self.targets = []
        # (section title, figure, current values, baseline values, control values or None, digits)
        self.comparisons = []

    def values(self, section, row, build, metric, stat):
        return of_reps(self.data[section][row][build][metric], stat)

    def median(self, section, row, build, metric, stat):
        return statistics.median(self.values(section, row, build, metric, stat))

    def paired(self, section, row_a, build_a, row_b, build_b, metric, stat):
        """The median over the repetitions of a / b within a repetition."""
        a = self.values(section, row_a, build_a, metric, stat)
        b = self.values(section, row_b, build_b, metric, stat)
        return statistics.median(ratio(x, y) for x, y in zip(a, b))

    def compare(self, title, section, row, metric, stat, label, digits=2):
        if "baseline" not in self.names or "baseline" not in self.data[section][row]:
            return
        control = None
        if "control" in self.data[section][row]:
            control = self.values(section, row, "control", metric, stat)
        self.comparisons.append(
            (title, label, self.values(section, row, "current", metric, stat),
             self.values(section, row, "baseline", metric, stat), control, digits)
        )

    def latency_table(self, section, rows, digits=3):
        self.lines += [
            f"| {rows} | n | p50 | p99 | min | max |",
            "|---|---|---|---|---|---|",
        ]
        for row, builds in self.data[section].items():
            for build in [name for name in ("current", PEER) if name in builds]:
                summaries = builds[build]["ms"]
                n = sum(s["n"] for s in summaries)
                self.lines.append(
                    f"| {row} | {n} | {rep_cell(of_reps(summaries, 'median'), digits)} | "
                    f"{rep_cell(of_reps(summaries, 'p99'), digits)} | {fmt(min(of_reps(summaries, 'min')), digits)} | "
                    f"{fmt(max(of_reps(summaries, 'max')), digits)} |"
                )

    def build(self, elapsed_s):
        args, data = self.args, self.data
        reps = args.repetitions
        baseline = next((b for b in self.bench.builds if b.name == "baseline"), None)
        lines = self.lines
        lines += [
            "# Benchmarks",
            "",
            "Figures from one run of `bash bench/run` on the machine below; every comparison was",
            "measured side by side in that run. Times in milliseconds unless marked. Each section but",
            f"compute ran {reps} times, the sections taking turns; a cell is the median of the figure's",
            f"{reps} repetitions, then their (min–max). Tables show the current build and the peers;",
            "the baseline's figures are in [Against the baseline](#against-the-baseline). Regenerate with",
            f"`bash bench/run` (this run: `{args.command_line or 'bench/bench.py'}`, {elapsed_s / 60:.1f} minutes).",
            "",
            "## Machine",
            "",
            *machine(args, self.bench),
            "",
        ]
        for section in SECTIONS:
            if section in data:
                getattr(self, f"section_{section}")()
        self.section_comparisons(baseline)
        if self.targets:
            lines += [
                "## Targets",
                "",
                "Judged on the current build: the median of the repetitions.",
                "",
                "| target | measured | met |",
                "|---|---|---|",
            ]
            for target, measured, met in self.targets:
                lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")
            lines.append("")
        return "\n".join(lines)

    def start_table(self, section, heading_rows):
        self.lines += [
            "| | n | first output (ms) | exit (ms) | peak RSS (MiB) |",
            "|---|---|---|---|---|",
        ]
        for row, builds in self.data[section].items():
            for build in [name for name in ("current", PEER) if name in builds]:
                kinds = builds[build]
                n = sum(s["n"] for s in kinds["first"])
                self.lines.append(
                    f"| {row} | {n} | {rep_cell(of_reps(kinds['first'], 'median'))} | "
                    f"{rep_cell(of_reps(kinds['exit'], 'median'))} | {rep_cell(of_reps(kinds['rss'], 'median'), 1)} |"
                )
                for metric, label, digits in [("first", "first output", 2), ("exit", "exit", 2), ("rss", "peak RSS (MiB)", 1)]:
                    self.compare(heading_rows, section, row, metric, "median", f"{row}: {label}", digits)
        self.lines.append("")

    def section_start(self):
        s = self.data["start"]
        trials = s[CACHED_ROW]["current"]["first"][0]["n"]
        self.lines += [
            "## Start: hello world as a `wasi:cli/command`",
            "",
            "From spawning the process to the first byte of the job's output on a pipe, and to its exit; and its",
            f"peak RSS (`ru_maxrss`). {trials} trials of each in each repetition, interleaved (the compiling runs in",
            "one block, the others in another); a small native probe (`bench/native/src/bin/startup.rs`)",
            "spawns each one. The job is `tests/jobs/src/command.rs` with no arguments: it prints one line.",
            "Cells are medians of the trials.",
            "",
        ]
        self.start_table("start", "Start")
        if TMPFS_ROW in s:
            shm = self.paired("start", TMPFS_ROW, "current", WASMTIME_CACHED_ROW, PEER, "first", "median")
            self.lines += [
                "The tmpfs row shows what the state directory's fsyncs cost at start: with them free, cached start is",
                f"{shm:.2f}x `wasmtime run`'s. The runner takes the job's lock and writes a fencing number (a file",
                "written, fsynced and renamed, then the directory fsynced), a plain command included; without",
                "`--output` it does so while the job starts.",
                "",
            ]
        start_cached = self.paired("start", CACHED_ROW, "current", WASMTIME_CACHED_ROW, PEER, "first", "median")
        start_pre = self.paired(
            "start", PRECOMPILED_ROW, "current", WASMTIME_PRECOMPILED_ROW, PEER, "first", "median"
        )
        rss_cached = self.paired("start", CACHED_ROW, "current", WASMTIME_CACHED_ROW, PEER, "rss", "median")
        rss_pre = self.paired(
            "start", PRECOMPILED_ROW, "current", WASMTIME_PRECOMPILED_ROW, PEER, "rss", "median"
        )
        self.lines += [
            "Ratios, runner / wasmtime run (the median over the repetitions of the ratio of medians within one):",
            f"first output cached {start_cached:.2f}x, precompiled {start_pre:.2f}x; peak RSS cached {rss_cached:.2f}x,",
            f"precompiled {rss_pre:.2f}x.",
            "",
        ]
        self.targets += [
            ("cached start ≤ 0.8x `wasmtime run`", f"{start_cached:.2f}x (precompiled: {start_pre:.2f}x)", start_cached <= 0.8),
            ("peak RSS ≤ 0.6x `wasmtime run`", f"{rss_cached:.2f}x cached, {rss_pre:.2f}x precompiled", rss_cached <= 0.6),
        ]

    def latency_section(self, section, title, text, target, bound_ms):
        self.lines += [f"## {title}", "", text, ""]
        self.latency_table(section, "job")
        self.lines.append("")
        for row in self.data[section]:
            self.compare(title, section, row, "ms", "median", f"{row}: p50")
            self.compare(title, section, row, "ms", "p99", f"{row}: p99")
        worst = max(self.median(section, row, "current", "ms", "p99") for row in self.data[section])
        self.targets.append((target, f"{worst:.3f} ms (the slower of the two)", worst < bound_ms))

    def section_request(self):
        self.latency_section(
            "request",
            "Stop request: `kill -TERM` to the job seeing it",
            "`tests/jobs` under the runner (cached): the harness reads the wall clock, sends SIGTERM; the job\n"
            "prints the wall clock when it sees the request. Milliseconds.",
            "request → job p99 < 1 ms",
            1,
        )

    def section_deadline(self):
        self.latency_section(
            "deadline",
            "Forced stop: grace deadline to process exit",
            "`tests/jobs` ignoring the request, `--grace 100ms`: from the SIGTERM plus 100 ms to the runner's exit\n"
            "(143) as the harness sees it in waitpid; includes the signal's delivery. Milliseconds.",
            "deadline → exit p99 < 5 ms",
            5,
        )

    def section_output(self):
        rounds = self.bench.extra["output_rounds"]
        names = list(self.data["output"])
        lines, reports = self.args.output_lines, self.args.progress_reports

        def paired(a, b):
            return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))

        def extra_ns(a, b, count):
            """What a's run took more than b's, in nanoseconds per line or report."""
            return statistics.median((x - y) * 1e6 / count for x, y in zip(rounds[a], rounds[b]))

        self.lines += [
            "## The job's output and progress",
            "",
            f"hyperfine, {self.args.output_runs} rounds in which each command runs once (current build, once; output",
            "to /dev/null, so that the runner's own cost shows): `testjob lines N` writes N lines of 100 bytes",
            "through std's stdout (a line at a time) or stderr, `testjob progress N` reports progress N times as fast",
            "as it can. Milliseconds: median (min–max) of the rounds; the extra per line or report is the",
            "median over the rounds of the difference to the first row of its group, within a round.",
            "",
            "| | time (ms) | extra per line or report |",
            "|---|---|---|",
        ]
        for n, name in enumerate(names):
            s = self.data["output"][name][PEER]["ms"][0]
            if n < 4:
                base, count = n - n % 2, lines
            else:
                base, count = 4, reports
            extra = "" if n == base else f"{extra_ns(n, base, count):+.0f} ns ({paired(n, base):.2f}x)"
            self.lines.append(f"| {name} | {fmt(s['median'], 0)} ({fmt(s['min'], 0)}–{fmt(s['max'], 0)}) | {extra} |")
        self.lines.append("")

    def section_compute(self):
        c = self.data["compute"]
        names = list(c)
        native = self.median("compute", names[0], PEER, "ms", "median")
        rounds = self.bench.extra["compute_rounds"]
        self.lines += [
            f"## Compute: primes below {self.args.primes_limit:,}",
            "",
            f"hyperfine, {self.args.compute_runs} rounds in which each command runs once, after a warm-up run (which",
            f"also fills the compiled-code caches); all print `{self.bench.extra['primes_answer']}`. `count-primes` is",
            "`bench/jobs/src/bin/count-primes.rs`: the example's `is_prime` (examples/primes/src/count.rs) in a",
            "plain loop. The runner turns epoch interruption on for every job (it is how a forced stop reaches a",
            "computing job) with the same wasmtime 48.0.8 and the same mechanism as `wasmtime run -W timeout`, so",
            "the epoch cost is measured on `wasmtime run` with it on and off. The second row is the same native",
            "program built without LLVM's x86 tuning that divides by a 32-bit `div` when both operands fit in 32",
            "bits (Cranelift always emits the 64-bit one, several times slower on most x86 cores). Once, current",
            "build only (minutes of CPU a round). Milliseconds: median (p25–p75; min–max) of the rounds.",
            "",
            "| | time (ms) | / native |",
            "|---|---|---|",
        ]
        for name in names:
            s = c[name][PEER]["ms"][0]
            self.lines.append(
                f"| {name} | {fmt(s['median'], 0)} ({fmt(s['p25'], 0)}–{fmt(s['p75'], 0)}; {fmt(s['min'], 0)}–"
                f"{fmt(s['max'], 0)}) | {ratio(s['median'], native):.3f}x |"
            )

        def paired(a, b):
            """The median over the rounds of a's time / b's time in the same round."""
            return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))

        epoch = paired(3, 2) - 1
        job_native, job_nodivl, cmd_on = paired(5, 0), paired(5, 1), paired(4, 3)
        self.lines += [
            "",
            "Ratios are medians over the rounds of the ratio within a round. Epoch interruption costs",
            f"{epoch * 100:+.1f}% (`wasmtime run`, on / off). The runner runs the plain command at {cmd_on:.3f}x",
            "`wasmtime run` with epoch interruption on, and the example job (the SDK's batch loop and its",
            f"checkpoints included) at {job_native:.3f}x native: {job_nodivl:.3f}x the native build that divides as",
            "Cranelift does.",
            "",
        ]
        self.targets += [
            ("epoch overhead < 3% on primes", f"{epoch * 100:+.1f}%", epoch < 0.03),
            ("primes ≤ 1.3x native", f"{job_native:.3f}x (the example job)", job_native <= 1.3),
        ]

    def section_commit(self):
        c = self.data["commit"]
        self.lines += [
            "## Checkpoint commit",
            "",
            "`bench/jobs/src/lib.rs` under the runner: `save_bytes` of a SIZE-byte state, timed in the job from",
            "the call to its return (copy into the runner, record encoding, checksum, write, fsync, two renames,",
            "directory fsync). Against `raw-commit` (`bench/native/src/bin/raw-commit.rs`): write a file, fsync,",
            "rename, fsync the directory, natively, in the same directory. Two rounds each way in each",
            "repetition, alternated. Milliseconds, medians of the commits; throughput is SIZE / median; the",
            "ratio is the median over the repetitions of the ratio within one.",
            "",
            "| size | n | runner | raw protocol | runner / raw | runner MiB/s | raw MiB/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for size, builds in c.items():
            runner = of_reps(builds["current"]["ms"], "median")
            raw = of_reps(builds[PEER]["ms"], "median")
            n = sum(s["n"] for s in builds["current"]["ms"])
            self.lines.append(
                f"| {human_size(size)} | {n} | {rep_cell(runner, 3)} | {rep_cell(raw, 3)} | "
                f"{self.paired('commit', size, 'current', size, PEER, 'ms', 'median'):.2f}x | "
                f"{size / MIB / (statistics.median(runner) / 1000):.0f} | {size / MIB / (statistics.median(raw) / 1000):.0f} |"
            )
            self.compare("Checkpoint commit", "commit", size, "ms", "median", f"{human_size(size)} commit")
        self.lines.append("")
        smallest, largest = min(c), max(c)
        small_ratio = self.paired("commit", smallest, "current", smallest, PEER, "ms", "median")
        large_throughput = 1 / self.paired("commit", largest, "current", largest, PEER, "ms", "median")
        self.targets += [
            (f"{human_size(smallest)} commit ≤ 1.2x the raw protocol", f"{small_ratio:.2f}x", small_ratio <= 1.2),
            (
                f"{human_size(largest)} commit ≥ 0.8x the raw protocol's throughput",
                f"{large_throughput:.2f}x",
                large_throughput >= 0.8,
            ),
        ]

    def section_s3(self):
        s = self.data["s3"]
        self.lines += [
            "## Checkpoint commit to S3",
            "",
            "The same `save_bytes` as above, timed in the job, with the state kept in a bucket",
            f"(`--state-dir s3://bench/...`) of {self.bench.extra['s3s_fs_version']}, an S3-compatible server on",
            "loopback, on the same file system; against the local store, two rounds each way in each repetition,",
            "alternated. A commit to S3 is two PUT requests: the record, then the conditional write (If-Match) of",
            "the head that names it. s3s-fs writes each object to a temporary file and renames it, without fsync:",
            "these figures are the runner's cost and the protocol's round trips, not a real bucket's durability (a",
            "real S3 adds its network round trips to each of the two requests). Milliseconds, medians of the commits.",
            "",
            "| size | n | local store | S3 (s3s-fs, loopback) | S3 / local |",
            "|---|---|---|---|---|",
        ]
        sizes = sorted({size for size, _ in s})
        for size in sizes:
            local = of_reps(s[(size, "local")]["current"]["ms"], "median")
            remote = of_reps(s[(size, "s3")]["current"]["ms"], "median")
            n = sum(x["n"] for x in s[(size, "s3")]["current"]["ms"])
            self.lines.append(
                f"| {human_size(size)} | {n} | {rep_cell(local, 3)} | {rep_cell(remote, 3)} | "
                f"{self.paired('s3', (size, 's3'), 'current', (size, 'local'), 'current', 'ms', 'median'):.2f}x |"
            )
            self.compare("Checkpoint commit to S3", "s3", (size, "s3"), "ms", "median", f"{human_size(size)} commit to S3", 3)
        self.lines.append("")

    def section_python(self):
        extra = self.bench.extra
        self.lines += [
            "## A Python job's start",
            "",
            f"`bench/jobs/hello.py` (the Python SDK, built with componentize-py: a {extra['python_size'] / MIB:.1f} MiB",
            "component embedding CPython) under the runner; spawn to first output, exit, peak RSS. Each run is",
            "a job of its own (`--job-id`): a job that completed is not run again. Medians of the trials.",
            "",
        ]
        self.start_table("python", "A Python job's start")
        p = "python"
        cached = self.median(p, CACHED_ROW, "current", "first", "median")
        pre = self.median(p, PRECOMPILED_ROW, "current", "first", "median")
        cached_rss = self.median(p, CACHED_ROW, "current", "rss", "median")
        pre_rss = self.median(p, PRECOMPILED_ROW, "current", "rss", "median")
        start_ratio = self.paired(p, CACHED_ROW, "current", PRECOMPILED_ROW, "current", "first", "median")
        rss_ratio = self.paired(p, CACHED_ROW, "current", PRECOMPILED_ROW, "current", "rss", "median")
        self.lines += [
            f"Cached against precompiled: first output {cached:.1f} against {pre:.1f} ms ({start_ratio:.2f}x), peak RSS",
            f"{cached_rss:.1f} against {pre_rss:.1f} MiB ({rss_ratio:.2f}x).",
            "",
        ]
        self.targets.append(
            (
                "Python job: cached start within 5% of precompiled (time and peak RSS)",
                f"{start_ratio:.2f}x time, {rss_ratio:.2f}x RSS",
                start_ratio <= 1.05 and rss_ratio <= 1.05,
            )
        )
        if "python-command" in self.data:
            self.lines += [
                "`wasmtime run` cannot run a job (it does not provide the `runner:job` interfaces), so the peer is",
                "the same one-line program as a `wasi:cli/command` (`bench/jobs/hello_command.py`, componentize-py: a",
                f"{extra['python_command_size'] / MIB:.1f} MiB component), cached, under both. Medians of the trials.",
                "",
            ]
            self.start_table("python-command", "A Python command's start")
            vs = self.paired("python-command", "runner, cached", "current", WASMTIME_CACHED_ROW, PEER, "first", "median")
            vs_rss = self.paired("python-command", "runner, cached", "current", WASMTIME_CACHED_ROW, PEER, "rss", "median")
            self.lines += [
                f"Runner / wasmtime run, cached: first output {vs:.2f}x, peak RSS {vs_rss:.2f}x.",
                "",
            ]

    def section_js(self):
        extra = self.bench.extra
        self.lines += [
            "## A JavaScript job's start",
            "",
            f"`bench/jobs/hello.js` (the JavaScript SDK, built with `guest-sdk/js/build-job.mjs`: componentize-js, a",
            f"{extra['js_size'] / MIB:.1f} MiB component embedding SpiderMonkey) under the runner, measured as the Python",
            "job is. Medians of the trials.",
            "",
        ]
        self.start_table("js", "A JavaScript job's start")
        rows = [(FIRST_ROW, "first run"), (CACHED_ROW, "cached"), (PRECOMPILED_ROW, "precompiled")]
        if "python" in self.data:
            self.lines += [
                "Beside the Python job of the same run (`bench/jobs/hello.py`, "
                f"{extra['python_size'] / MIB:.1f} MiB), current build, medians of the repetitions:",
                "",
                "| | JavaScript: first output (ms) | Python: first output (ms) | JS / Python | JavaScript: peak RSS (MiB) "
                "| Python: peak RSS (MiB) | JS / Python |",
                "|---|---|---|---|---|---|---|",
            ]
            for row, label in rows:
                js_ms, py_ms = self.median("js", row, "current", "first", "median"), self.median(
                    "python", row, "current", "first", "median"
                )
                js_rss, py_rss = self.median("js", row, "current", "rss", "median"), self.median(
                    "python", row, "current", "rss", "median"
                )
                self.lines.append(
                    f"| {label} | {fmt(js_ms)} | {fmt(py_ms)} | {ratio(js_ms, py_ms):.2f}x | {fmt(js_rss, 1)} | "
                    f"{fmt(py_rss, 1)} | {ratio(js_rss, py_rss):.2f}x |"
                )
            self.lines.append("")
        if "js-wordcount" not in self.data:
            return
        build_s = extra["js_build_s"]
        mb = extra["wordcount_input_bytes"] / 1e6
        self.lines += [
            f"Build: `node guest-sdk/js/build-job.mjs examples/js-wordcount/wordcount.js -o ...` took "
            f"{statistics.median(build_s):.1f} s (median of {len(build_s)}; {min(build_s):.1f}–{max(build_s):.1f}); "
            f"the component is {extra['js_wordcount_size'] / MIB:.1f} MiB.",
            "",
            f"The wordcount example in its three languages on the same {mb:.1f} MB of text (`{extra['wordcount_answer']}`),",
            f"cached, under the current runner, hyperfine, {self.args.compute_runs} rounds in which each runs once",
            "(each run counts it all: `--start-over`). Milliseconds: median (min–max) of the rounds; the JavaScript",
            "job runs in SpiderMonkey's interpreter (componentize-js's ahead-of-time mode needs weval, which its",
            "npm package downloads from GitHub at build time).",
            "",
            "| | time (ms) | MB/s | / Rust | / Python |",
            "|---|---|---|---|---|",
        ]
        c = self.data["js-wordcount"]
        names = list(c)
        rust, python = (self.median("js-wordcount", names[i], PEER, "ms", "median") for i in (0, 1))
        for name in names:
            stats = c[name][PEER]["ms"][0]
            self.lines.append(
                f"| {name} | {fmt(stats['median'], 0)} ({fmt(stats['min'], 0)}–{fmt(stats['max'], 0)}) | "
                f"{mb / (stats['median'] / 1000):.2f} | {ratio(stats['median'], rust):.2f}x | "
                f"{ratio(stats['median'], python):.2f}x |"
            )
        self.lines.append("")

    def section_core(self):
        trials = self.data["core"][CACHED_ROW]["current"]["first"][0]["n"]
        self.lines += [
            "## Core modules (wasm32-wasip1)",
            "",
            "The same `.wasm` under the runner (natively, through wasmtime's WASI preview 1) and under",
            "`wasmtime run`. Start: `tests/core-jobs/src/command.rs` built for wasm32-wasip1, with no arguments (it",
            f"prints one line), {trials} trials of each in each repetition, interleaved, as in the start section;",
            "current build only (the baseline may not run core modules). Cells are medians of the trials.",
            "",
        ]
        self.start_table("core", "Core modules")
        start_cached = self.paired("core", CACHED_ROW, "current", WASMTIME_CACHED_ROW, PEER, "first", "median")
        start_pre = self.paired("core", PRECOMPILED_ROW, "current", WASMTIME_PRECOMPILED_ROW, PEER, "first", "median")
        rss_cached = self.paired("core", CACHED_ROW, "current", WASMTIME_CACHED_ROW, PEER, "rss", "median")
        rss_pre = self.paired("core", PRECOMPILED_ROW, "current", WASMTIME_PRECOMPILED_ROW, PEER, "rss", "median")
        self.lines += [
            "Ratios, runner / wasmtime run (the median over the repetitions of the ratio of medians within one):",
            f"first output cached {start_cached:.2f}x, precompiled {start_pre:.2f}x; peak RSS cached {rss_cached:.2f}x,",
            f"precompiled {rss_pre:.2f}x.",
            "",
        ]
        if "core-compute" not in self.data:
            return
        c = self.data["core-compute"]
        rounds = self.bench.extra["core_compute_rounds"]
        self.lines += [
            f"Compute: primes below {self.args.primes_limit:,}, hyperfine, {self.args.compute_runs} rounds in which each",
            "command runs once, after a warm-up run. `count-primes` is `bench/jobs/src/bin/count-primes.rs` (the",
            "compute section's program) built for wasm32-wasip1; `c-primes` is `examples/c-primes` (clang -O2).",
            "Milliseconds: median (p25–p75; min–max) of the rounds.",
            "",
            "| | time (ms) | / wasmtime run |",
            "|---|---|---|",
        ]
        names = list(c)
        peer = self.median("core-compute", CORE_WASMTIME_ROW, PEER, "ms", "median")
        for name in names:
            s = c[name][PEER]["ms"][0]
            self.lines.append(
                f"| {name} | {fmt(s['median'], 0)} ({fmt(s['p25'], 0)}–{fmt(s['p75'], 0)}; {fmt(s['min'], 0)}–"
                f"{fmt(s['max'], 0)}) | {ratio(s['median'], peer):.3f}x |"
            )
        compute = statistics.median(
            x / y for x, y in zip(rounds[names.index(CORE_RUNNER_ROW)], rounds[names.index(CORE_WASMTIME_ROW)])
        )
        self.lines += [
            "",
            f"The runner runs the same wasip1 program at {compute:.3f}x `wasmtime run` with epoch interruption on (the",
            "median over the rounds of the ratio within a round).",
            "",
        ]

    def section_container(self):
        sizes = self.bench.extra["container_sizes"]["current"]
        self.lines += [
            "## Container: `runc kill TERM` to exit",
            "",
            "The image `deploy/build-image` builds from the static release runner and `primes`, unpacked with umoci",
            "and run by runc (`runc run`, in the foreground) with a bind-mounted state directory and a read-only",
            "root, as `tests/integration/container.rs` runs it. Once the job has saved its first checkpoint,",
            "`runc kill ID TERM`; the time until `runc run` has exited (75: the job saved its place and",
            "suspended). The first row includes `runc kill`'s own start. Milliseconds.",
            "",
        ]
        self.latency_table("container", "from")
        for row in self.data["container"]:
            self.compare("Container", "container", row, "ms", "median", f"{row}: p50", 1)
        self.lines += [
            "",
            f"Sizes: the static runner {sizes['runner'] / MIB:.1f} MiB as built "
            f"(`x86_64-unknown-linux-musl`, release), {sizes['runner_in_image'] / MIB:.1f} MiB stripped in the image;",
            f"the whole image (OCI layout, compressed layer, config and manifest) {sizes['layout'] / MIB:.1f} MiB.",
            "",
        ]

    def section_comparisons(self, baseline):
        if baseline is None or not self.comparisons:
            return
        reps = self.args.repetitions
        control = next((b for b in self.bench.builds if b.name == "control"), None)
        worse = []
        text = (
            f"The current build (`{self.bench.current.revision}`) and the baseline (`{baseline.revision}`), "
            "measured in the same run, trial by trial in turn. Each figure is the median of its repetitions "
            "(min–max); the ratio is the median over the repetitions of current / baseline within one, so that "
            f"a machine that slows down for a while slows both. A figure is marked **worse** only when all {reps} "
            f"repetitions of the current build are worse than all {reps} of the baseline (when the builds do not "
            f"differ, chance alone does that once in {math.comb(2 * reps, reps)}) and the medians differ by more "
            f"than the larger of the two builds' own spread over the repetitions, by more than {FLOOR:.0%}"
            + (
                ", and, with a control, by more than twice what the control differed from the baseline in any "
                "repetition, the current build's repetitions all beyond the control's as well"
                if control
                else ""
            )
            + "; **better** likewise; otherwise the difference is within what this run measured as noise."
        )
        if control:
            text += (
                " The control is the baseline's source built again in another directory and measured beside "
                "the two: two builds of one source differ (the directory changes the symbols' hashes, so the "
                "code's layout), and a short path such as the forced stop or a start moves by a tenth or more "
                "with it (in a run of one commit against itself, the checkout's build 8% slower than the "
                "baseline, the control 8% faster). The current build's layout is one more such draw, hence "
                "twice the control's distance. One control is a small sample: a figure marked worse by a "
                "tenth or so on a millisecond path is a lead to measure again, not yet a regression."
            )
        self.lines += ["## Against the baseline", "", *textwrap.wrap(text, 100)]
        self.lines += [
            "",
            "| section | figure | current | baseline | current / baseline | "
            + ("control / baseline | " if control else "")
            + "verdict |",
            "|---|---|---|---|---|" + ("---|" if control else "") + "---|",
        ]
        for title, label, current, base, again, digits in self.comparisons:
            ratios = [ratio(c, b) for c, b in zip(current, base)]
            judged = verdict(current, base, again)
            shown = {"worse": "**worse**", "better": "**better**", "same": "same"}[judged]
            if judged == "worse":
                worse.append(f"{title}: {label}")
            cells = [title, label, rep_cell(current, digits), rep_cell(base, digits), f"{rep_cell(ratios)}x"]
            if control:
                cells.append(f"{rep_cell([ratio(c, b) for c, b in zip(again, base)])}x" if again else "")
            self.lines.append(f"| {' | '.join(cells)} | {shown} |")
        self.lines += [
            "",
            f"Regressions: {'; '.join(worse) if worse else 'none'}.",
            "",
        ]


def human_size(size):
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= KIB and size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} B"


def parse_sizes(text):
    """`1024:200,1048576:50` -> [(1024, 200), (1048576, 50)]."""
    pairs = []
    for item in text.split(","):
        size, count = item.split(":")
        pairs.append((int(size), int(count)))
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ["runner", "wasmtime", "hyperfine", "hello", "testjob", "primes", "count-primes-wasm",
                 "count-primes-native", "count-primes-native-nodivl", "benchjob", "raw-commit", "python-hello",
                 "python-command", "startup", "static-runner", "image-layout", "s3s-fs", "baseline-runner",
                 "baseline-static-runner", "baseline-image-layout", "control-runner", "control-static-runner",
                 "control-image-layout", "core-hello", "core-count-primes", "c-primes", "js-hello", "js-wordcount",
                 "python-wordcount", "wordcount"]:
        parser.add_argument(f"--{name}", help=f"path of {name}")
    parser.add_argument("--current-rev", help="what the runner was built from, for the report")
    parser.add_argument("--baseline-rev", help="what the baseline runner was built from, for the report")
    parser.add_argument("--work", required=True, help="scratch directory (removed first); its file system is measured")
    parser.add_argument("--out", required=True, help="the Markdown report to write")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--repetitions", type=int, default=3, help="runs of each section but compute")
    parser.add_argument("--start-trials", type=int, default=40)
    parser.add_argument("--python-first-trials", type=int, default=3)
    parser.add_argument("--python-trials", type=int, default=20)
    parser.add_argument("--request-trials", type=int, default=200)
    parser.add_argument("--deadline-trials", type=int, default=200)
    parser.add_argument("--primes-limit", type=int, default=20_000_000)
    parser.add_argument("--compute-runs", type=int, default=7)
    parser.add_argument("--output-lines", type=int, default=1_000_000, help="lines each output run writes")
    parser.add_argument("--progress-reports", type=int, default=10_000_000, help="reports each progress run makes")
    parser.add_argument("--output-runs", type=int, default=7)
    parser.add_argument("--commit-sizes", type=parse_sizes, default=parse_sizes(f"{KIB}:200,{MIB}:50,{64 * MIB}:8"),
                        help="SIZE:COUNT,... (bytes, commits per round)")
    parser.add_argument("--s3-sizes", type=parse_sizes, default=parse_sizes(f"{KIB}:200,{MIB}:50"),
                        help="SIZE:COUNT,... for the s3 section")
    parser.add_argument("--container-trials", type=int, default=10)
    parser.add_argument("--command-line", default="", help="the command that ran this, for the report")
    args = parser.parse_args()

    sections = [section for section in args.only.split(",") if section]
    unknown = [section for section in sections if section not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}: the sections are {', '.join(SECTIONS)}")
    needs = {
        "start": ["runner", "wasmtime", "hello", "startup"],
        "request": ["runner", "testjob"],
        "deadline": ["runner", "testjob"],
        "compute": [
            "runner", "wasmtime", "hyperfine", "primes", "count_primes_wasm", "count_primes_native",
            "count_primes_native_nodivl",
        ],
        "output": ["runner", "hyperfine", "testjob"],
        "commit": ["runner", "benchjob", "raw_commit"],
        "s3": ["runner", "benchjob", "s3s_fs"],
        "python": ["runner", "python_hello", "startup"],
        "js": ["runner", "js_hello", "startup", "hyperfine", "wordcount", "python_wordcount", "js_wordcount"],
        "core": ["runner", "wasmtime", "hyperfine", "startup", "core_hello", "core_count_primes", "c_primes"],
        "container": ["image_layout", "static_runner"],
    }
    if args.python_command:
        needs["python"].append("wasmtime")
    if args.control_runner and not args.baseline_runner:
        parser.error("--control-runner is a second build of the baseline: it needs --baseline-runner")
    if args.baseline_runner:
        needs["container"] += ["baseline_image_layout", "baseline_static_runner"]
    if args.control_runner:
        needs["container"] += ["control_image_layout", "control_static_runner"]
    for section in sections:
        for name in needs[section]:
            path = getattr(args, name)
            if not path or not os.path.exists(path):
                parser.error(f"section {section} needs --{name.replace('_', '-')} (got {path!r})")

    began = time.monotonic()
    bench = Bench(args)
    bench.setup()
    for rep in range(args.repetitions):
        for section in SECTIONS:
            if section in sections:
                getattr(bench, section)(rep)
    text = Report(bench, args).build(time.monotonic() - began)
    with open(args.out, "w") as out:
        out.write(text)
    print(text)


if __name__ == "__main__":
    main()
