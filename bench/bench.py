#!/usr/bin/env python3
"""The runner's benchmark: measures the runner beside `wasmtime run` and native code, in
one run on one machine, and writes the figures to a Markdown file (BENCHMARKS.md).

Run it through `bash bench/run`, which builds everything this needs and installs the
peers. Sections (all by default; pick some with --only):

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
           interruption on and off, and built natively.
  commit   checkpoint commit latency as the job sees it, against the raw protocol
           (write, fsync, rename, directory fsync) done by a native program, in the same
           directory.
  s3       checkpoint commit latency with the state in a bucket of s3s-fs (an
           S3-compatible server, on loopback), against the local store, alternated.
  python   a Python job's start: first run, cached, precompiled.
  container the image deploy/build-image builds (static release runner, primes), run by
           runc with a bind-mounted state directory: `runc kill ID TERM` -> `runc run`
           has exited (75, the job suspended), once the job has saved a checkpoint; and
           the sizes of the static runner and of the image.

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
import time

TMPFS_ROW = "runner, cached, state directory on tmpfs (no fsync cost; for comparison)"
NODIVL_ROW = "native, with LLVM's 32-bit division fast path off (`-C target-feature=-idivq-to-divl`)"
SECTIONS = ["start", "request", "deadline", "compute", "commit", "s3", "python", "container"]
CONTAINER_USER = 65532
KIB = 1024
MIB = 1024 * 1024


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


def spread(s, digits=2):
    return f"{fmt(s['median'], digits)} ({fmt(s['p25'], digits)}–{fmt(s['p75'], digits)}; {fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


# ---------------------------------------------------------------------------- processes


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


# ---------------------------------------------------------------------------- sections


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.env = child_env()
        self.stderr = os.path.join(self.work, "stderr.txt")
        self.results = {}
        self.wasmtime_cache_config = os.path.join(self.work, "wasmtime-cache.toml")

    def runner(self, *args):
        return [self.args.runner, "--state-dir", os.path.join(self.work, "state"), *args]

    def wasmtime(self, *args, cache=True):
        if cache:
            return [self.args.wasmtime, "run", "-C", f"cache-config={self.wasmtime_cache_config}", *args]
        return [self.args.wasmtime, "run", "-C", "cache=n", *args]

    def log(self, message):
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def setup(self):
        if os.path.exists(self.work):
            shutil.rmtree(self.work)
        os.makedirs(self.work)
        with open(self.wasmtime_cache_config, "w") as config:
            config.write(f'[cache]\ndirectory = "{os.path.join(self.work, "wasmtime-cache")}"\n')

    # -- start

    def interleaved(self, variants, trials, expect):
        """variants: name -> function(trial) returning argv. Runs trials round-robin."""
        samples = {name: {"first": [], "exit": [], "rss": []} for name in variants}
        for trial in range(trials):
            for name, argv_for in variants.items():
                first, exited, rss, output, code = spawn_timed(self.args.startup, argv_for(trial), self.env, self.stderr)
                if code != 0 or expect not in output:
                    with open(self.stderr, errors="replace") as err:
                        detail = err.read()[-2000:]
                    sys.exit(f"bench: {name} exited {code} printing {output[:200]!r}; its stderr ends:\n{detail}")
                samples[name]["first"].append(first)
                samples[name]["exit"].append(exited)
                samples[name]["rss"].append(rss / 1024)
        return {
            name: {key: summary(values) for key, values in kinds.items()} for name, kinds in samples.items()
        }

    def start(self):
        hello, expect = self.args.hello, "hello"
        trials = self.args.start_trials
        runner_cwasm = os.path.join(self.work, "hello-runner.cwasm")
        wasmtime_cwasm = os.path.join(self.work, "hello-wasmtime.cwasm")
        run_quiet([self.args.runner, "compile", hello, "-o", runner_cwasm], self.env)
        run_quiet([self.args.wasmtime, "compile", hello, "-o", wasmtime_cwasm], self.env)
        cache = os.path.join(self.work, "runner-cache")
        first_caches = os.path.join(self.work, "runner-cache-first")
        # Fill both caches.
        check_run(self.runner("--cache-dir", cache, hello), self.env, expect)
        check_run(self.wasmtime(hello), self.env, expect)
        compiling = {
            "runner, first run (compiles, fills the cache)": lambda trial: self.runner(
                "--cache-dir", os.path.join(first_caches, str(trial)), hello
            ),
            "wasmtime run, no cache (`-C cache=n`)": lambda trial: self.wasmtime(hello, cache=False),
        }
        loading = {
            "runner, cached": lambda trial: self.runner("--cache-dir", cache, hello),
            "wasmtime run, cached": lambda trial: self.wasmtime(hello),
            "runner, precompiled (`runner compile`)": lambda trial: self.runner("--no-cache", runner_cwasm),
            "wasmtime run, precompiled (`wasmtime compile`)": lambda trial: self.wasmtime(
                "--allow-precompiled", wasmtime_cwasm, cache=False
            ),
        }
        if os.path.isdir("/dev/shm"):
            # What the state directory's fsyncs cost: the runner takes the job's lock and
            # writes a fencing number (fsynced) even for a plain command.
            shm_state = tempfile.mkdtemp(prefix="runner-bench-state-", dir="/dev/shm")
            loading[TMPFS_ROW] = lambda trial: [
                self.args.runner, "--state-dir", shm_state, "--cache-dir", cache, hello
            ]
        # Two blocks, so that a compiling run does not heat the machine just before a
        # loading one.
        self.log(f"start: {len(compiling) + len(loading)} variants x {trials} trials, interleaved")
        self.results["start"] = {
            **self.interleaved(compiling, trials, expect),
            **self.interleaved(loading, trials, expect),
        }
        if TMPFS_ROW in loading:
            shutil.rmtree(shm_state, ignore_errors=True)
        shutil.rmtree(first_caches, ignore_errors=True)

    # -- stop request and forced stop

    def start_testjob(self, mode, grace):
        proc = subprocess.Popen(
            self.runner("--cache-dir", os.path.join(self.work, "runner-cache"), "--grace", grace, self.args.testjob, mode),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=self.env,
            text=True,
        )
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            sys.exit(f"bench: testjob {mode}: expected `ready`, got {line!r}")
        return proc

    def request(self):
        trials = self.args.request_trials
        out = {}
        for mode, name in [("flag", "polling the flag"), ("wait", "blocked in poll on the pollable")]:
            self.log(f"request: {name}, {trials} trials")
            samples = []
            for _ in range(trials):
                proc = self.start_testjob(mode, "60s")
                sent = time.time_ns()
                os.kill(proc.pid, signal.SIGTERM)
                line = proc.stdout.readline()
                seen = int(line.split("unix_ns=")[1].split()[0])
                if proc.wait() != 75:
                    sys.exit(f"bench: testjob {mode} did not exit 75 after the request")
                samples.append((seen - sent) / 1e6)
            out[name] = summary(samples)
        self.results["request"] = out

    def deadline(self):
        trials, grace_ms = self.args.deadline_trials, 100
        out = {}
        for mode, name in [("spin", "spinning in a loop"), ("sleep", "blocked in a host call (sleep)")]:
            self.log(f"deadline: {name}, {trials} trials")
            samples = []
            for _ in range(trials):
                proc = self.start_testjob(mode, f"{grace_ms}ms")
                sent = time.monotonic_ns()
                os.kill(proc.pid, signal.SIGTERM)
                code = proc.wait()
                exited = time.monotonic_ns()
                if code != 143:
                    sys.exit(f"bench: testjob {mode} exited {code}, not 143, after the grace period")
                samples.append((exited - sent) / 1e6 - grace_ms)
            out[name] = summary(samples)
        self.results["deadline"] = out

    # -- compute

    def compute(self):
        limit = str(self.args.primes_limit)
        expect = f"primes below {limit}:"
        cache = os.path.join(self.work, "runner-cache")
        commands = {
            "native (count-primes)": [self.args.count_primes_native, limit],
            NODIVL_ROW: [self.args.count_primes_native_nodivl, limit],
            "wasmtime run count-primes.wasm, epoch interruption off": self.wasmtime(self.args.count_primes_wasm, limit),
            "wasmtime run count-primes.wasm, epoch interruption on (`-W timeout=1h`)": self.wasmtime(
                "-W", "timeout=3600s", self.args.count_primes_wasm, limit
            ),
            "runner count-primes.wasm (a plain command)": self.runner("--cache-dir", cache, self.args.count_primes_wasm, limit),
            "runner primes.wasm (the example job: SDK batch, a checkpoint a second)": self.runner(
                "--cache-dir", cache, "--job-id", "bench-primes", "--start-over", self.args.primes, limit
            ),
        }
        answers = set()
        for argv in commands.values():
            output = check_run(argv, self.env, expect)
            answers.add(next(line for line in output.splitlines() if line.startswith(expect)))
        if len(answers) != 1:
            sys.exit(f"bench: the primes programs disagree: {sorted(answers)}")
        self.results["primes_answer"] = answers.pop()
        # One hyperfine call per round, each running every command once: the commands
        # take turns, so that the machine drifting (these are minutes of CPU) does not
        # land on one of them. The checks above were the warm-up (and filled the caches).
        export = os.path.join(self.work, "hyperfine.json")
        times = {name: [] for name in commands}
        self.log(f"compute: hyperfine, {self.args.compute_runs} rounds of {len(commands)} commands, LIMIT={limit}")
        for _ in range(self.args.compute_runs):
            hyperfine = [self.args.hyperfine, "-N", "--runs", "1", "--export-json", export]
            for name, argv in commands.items():
                hyperfine += ["-n", name, " ".join(argv)]
            subprocess.run(hyperfine, env=self.env, check=True, stdout=sys.stderr)
            with open(export) as file:
                for result in json.load(file)["results"]:
                    times[result["command"]] += [t * 1000 for t in result["times"]]
        self.results["compute"] = {name: summary(samples) for name, samples in times.items()}
        self.results["compute_rounds"] = list(times.values())

    # -- checkpoint commit

    def commit(self):
        rounds = 2
        out = {}
        for size, count in self.args.commit_sizes:
            runner_samples, raw_samples = [], []
            self.log(f"commit: {size} bytes, {rounds} rounds of {count} commits each way")
            for _ in range(rounds):
                output = check_run(
                    self.runner(
                        "--cache-dir",
                        os.path.join(self.work, "runner-cache"),
                        "--job-id",
                        f"bench-commit-{size}",
                        "--start-over",
                        self.args.benchjob,
                        "commit",
                        str(size),
                        str(count),
                    ),
                    self.env,
                    "commit_ns",
                )
                runner_samples += parse_commits(output)
                raw_dir = os.path.join(self.work, "state", f"raw-{size}")
                output = check_run(
                    [self.args.raw_commit, raw_dir, str(size), str(count)], self.env, "commit_ns"
                )
                raw_samples += parse_commits(output)
            out[size] = {"runner": summary(runner_samples), "raw": summary(raw_samples)}
        self.results["commit"] = out

    # -- checkpoint commit to S3

    def s3(self):
        root = os.path.join(self.work, "s3")
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
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit("bench: s3s-fs did not listen within 30 s")
                    time.sleep(0.01)
            s3_env = dict(
                self.env,
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench-secret",
                AWS_REGION="us-east-1",
            )
            rounds = 2
            out = {}
            for size, count in self.args.s3_sizes:
                self.log(f"s3: {size} bytes, {rounds} rounds of {count} commits each way")
                local, remote = [], []
                for _ in range(rounds):
                    for samples, state, env in [
                        (local, os.path.join(self.work, "state"), self.env),
                        (remote, "s3://bench/commit", s3_env),
                    ]:
                        output = check_run(
                            [self.args.runner, "--state-dir", state, "--cache-dir",
                             os.path.join(self.work, "runner-cache"), "--job-id", f"bench-s3-{size}",
                             "--start-over", self.args.benchjob, "commit", str(size), str(count)],
                            env,
                            "commit_ns",
                        )
                        samples += parse_commits(output)
                out[size] = {"local": summary(local), "s3": summary(remote)}
            self.results["s3"] = out
        finally:
            server.kill()
            server.wait()
        self.results["s3s_fs_version"] = run_quiet([self.args.s3s_fs, "--version"]).strip()

    # -- python

    def python(self):
        job, expect = self.args.python_hello, "hello from a Python job"
        cwasm = os.path.join(self.work, "hello-py.cwasm")
        run_quiet([self.args.runner, "compile", job, "-o", cwasm], self.env)
        cache = os.path.join(self.work, "runner-cache")
        first_caches = os.path.join(self.work, "runner-cache-python-first")
        check_run(self.runner("--cache-dir", cache, "--job-id", "bench-py", job), self.env, expect)
        self.log(f"python: first run x {self.args.python_first_trials}, cached and precompiled x {self.args.start_trials}")
        first = self.interleaved(
            {
                "runner, first run (compiles, fills the cache)": lambda trial: self.runner(
                    "--cache-dir", os.path.join(first_caches, str(trial)), "--job-id", "bench-py", job
                )
            },
            self.args.python_first_trials,
            expect,
        )
        shutil.rmtree(first_caches, ignore_errors=True)
        rest = self.interleaved(
            {
                "runner, cached": lambda trial: self.runner("--cache-dir", cache, "--job-id", "bench-py", job),
                "runner, precompiled (`runner compile`)": lambda trial: self.runner(
                    "--no-cache", "--job-id", "bench-py", cwasm
                ),
            },
            self.args.start_trials,
            expect,
        )
        self.results["python"] = {**first, **rest}
        self.results["python_size"] = os.path.getsize(job)


    # -- container

    def container(self):
        trials = self.args.container_trials
        base = os.path.join(self.work, "container")
        bundle = os.path.join(base, "bundle")
        os.makedirs(base)
        run_quiet(["umoci", "unpack", "--image", f"{self.args.image_layout}:bench", bundle])
        with open(os.path.join(bundle, "config.json")) as config_file:
            config = json.load(config_file)
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/runner", "/jobs/primes.wasm"]
        config["root"] = {"path": os.path.join(bundle, "rootfs"), "readonly": True}
        state = os.path.join(base, "state")
        config["mounts"] += [
            {"destination": "/state", "type": "bind", "source": state, "options": ["rbind", "rw"]},
            {"destination": "/cache", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", f"uid={CONTAINER_USER}", f"gid={CONTAINER_USER}"]},
        ]
        self.log(f"container: runc kill TERM -> exit, {trials} trials")
        from_call, from_return = [], []
        for trial in range(trials):
            shutil.rmtree(state, ignore_errors=True)
            os.makedirs(state)
            os.chown(state, CONTAINER_USER, CONTAINER_USER)
            trial_bundle = os.path.join(base, f"trial-{trial}")
            os.makedirs(trial_bundle)
            with open(os.path.join(trial_bundle, "config.json"), "w") as config_file:
                json.dump(config, config_file)
            name = f"runner-bench-{os.getpid()}-{trial}"
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
            from_call.append((exited - called) / 1e6)
            from_return.append((exited - returned) / 1e6)
        layout_bytes = 0
        for directory, _, files in os.walk(os.path.join(self.args.image_layout, "blobs")):
            layout_bytes += sum(os.path.getsize(os.path.join(directory, file)) for file in files)
        self.results["container"] = {
            "`runc kill` started → `runc run` exited": summary(from_call),
            "`runc kill` returned → `runc run` exited": summary(from_return),
        }
        self.results["container_sizes"] = {
            "runner": os.path.getsize(self.args.static_runner),
            "runner_in_image": os.path.getsize(os.path.join(bundle, "rootfs", "runner")),
            "layout": layout_bytes,
        }


def parse_commits(output):
    line = next(line for line in output.splitlines() if line.startswith("commit_ns"))
    return [int(value) / 1e6 for value in line.split()[1:]]


# ---------------------------------------------------------------------------- report


def machine(args):
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
    revision = first_line(["git", "describe", "--always", "--dirty"])
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {mem_kib / MIB:.1f} GiB",
        f"- Kernel: {platform.system()} {platform.release()}; work directory on {fs} ({args.work})",
        f"- runner: release build of `{revision}` ({args.runner}); `{first_line([args.wasmtime, '--version'])}`",
        f"- `{first_line(['rustc', '--version'])}`; `{first_line([args.hyperfine, '--version'])}`; Python {platform.python_version()}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"RUST_BACKTRACE unset for every measured process",
    ]


def ratio(a, b):
    return a / b if b else float("nan")


def report(bench, args, elapsed_s):
    r = bench.results
    lines = [
        "# Benchmarks",
        "",
        "Figures from one run of `bash bench/run` on the machine below; every comparison was",
        "measured side by side in that run. Times in milliseconds unless marked; each cell",
        "is the median, then (p25–p75; min–max). Regenerate with `bash bench/run`",
        f"(this run: `{args.command_line or 'bench/bench.py'}`, {elapsed_s / 60:.1f} minutes).",
        "",
        "## Machine",
        "",
        *machine(args),
        "",
    ]
    targets = []

    if "start" in r:
        s = r["start"]
        lines += [
            "## Start: hello world as a `wasi:cli/command`",
            "",
            "From spawning the process to the first byte of the job's output on a pipe, and to its exit; and its",
            f"peak RSS (`ru_maxrss`). {next(iter(s.values()))['first']['n']} trials each, interleaved (the compiling runs in one block, the",
            "others in another); a small native probe",
            "(`bench/native/src/bin/startup.rs`) spawns each one. The job is `tests/jobs/src/command.rs` with no",
            "arguments: it prints one line.",
            "",
            "| | first output (ms) | exit (ms) | peak RSS (MiB) |",
            "|---|---|---|---|",
        ]
        for name, kinds in s.items():
            lines.append(f"| {name} | {spread(kinds['first'])} | {spread(kinds['exit'])} | {spread(kinds['rss'], 1)} |")
        rc, wc = s["runner, cached"], s["wasmtime run, cached"]
        if TMPFS_ROW in s:
            shm = s[TMPFS_ROW]["first"]["median"] / wc["first"]["median"]
            lines += [
                "",
                f"The tmpfs row shows what the state directory's fsyncs cost at start: with them free, cached start is",
                f"{shm:.2f}x `wasmtime run`'s. The runner takes the job's lock and writes a fencing number (a file",
                "written, fsynced and renamed, then the directory fsynced), a plain command included; without",
                "`--output` it does so while the job starts.",
            ]
        rp, wp = s["runner, precompiled (`runner compile`)"], s["wasmtime run, precompiled (`wasmtime compile`)"]
        start_cached = ratio(rc["first"]["median"], wc["first"]["median"])
        start_pre = ratio(rp["first"]["median"], wp["first"]["median"])
        rss_cached = ratio(rc["rss"]["median"], wc["rss"]["median"])
        rss_pre = ratio(rp["rss"]["median"], wp["rss"]["median"])
        lines += [
            "",
            f"Ratios of medians, runner / wasmtime run: first output cached {start_cached:.2f}x, precompiled {start_pre:.2f}x;",
            f"peak RSS cached {rss_cached:.2f}x, precompiled {rss_pre:.2f}x.",
            "",
        ]
        targets += [
            ("cached start ≤ 0.8x `wasmtime run`", f"{start_cached:.2f}x (precompiled: {start_pre:.2f}x)", start_cached <= 0.8),
            ("peak RSS ≤ 0.6x `wasmtime run`", f"{rss_cached:.2f}x cached, {rss_pre:.2f}x precompiled", rss_cached <= 0.6),
        ]

    latencies = [
        (
            "request",
            "Stop request: `kill -TERM` to the job seeing it",
            "`tests/jobs` under the runner (cached): the harness reads the wall clock, sends SIGTERM; the job\n"
            "prints the wall clock when it sees the request. Milliseconds.",
            "request → job p99 < 1 ms",
            1,
        ),
        (
            "deadline",
            "Forced stop: grace deadline to process exit",
            "`tests/jobs` ignoring the request, `--grace 100ms`: from the SIGTERM plus 100 ms to the runner's exit\n"
            "(143) as the harness sees it in waitpid; includes the signal's delivery. Milliseconds.",
            "deadline → exit p99 < 5 ms",
            5,
        ),
    ]
    for key, title, text, target, bound_ms in latencies:
        if key not in r:
            continue
        lines += [f"## {title}", "", text, "", "| job | n | p50 | p99 | min | max |", "|---|---|---|---|---|---|"]
        for name, s in r[key].items():
            cells = " | ".join(fmt(s[stat], 3) for stat in ["median", "p99", "min", "max"])
            lines.append(f"| {name} | {s['n']} | {cells} |")
        worst = max(s["p99"] for s in r[key].values())
        lines.append("")
        targets.append((target, f"{worst:.3f} ms (the slower of the two)", worst < bound_ms))

    if "compute" in r:
        c = r["compute"]
        names = list(c)
        native = c[names[0]]["median"]
        lines += [
            f"## Compute: primes below {args.primes_limit:,}",
            "",
            f"hyperfine, {args.compute_runs} rounds in which each command runs once, after a warm-up run (which",
            f"also fills the compiled-code caches); all print `{r['primes_answer']}`. `count-primes` is `bench/jobs/src/bin/count-primes.rs`: the",
            "example's `is_prime` (examples/primes/src/count.rs) in a plain loop. The runner turns epoch",
            "interruption on for every job (it is how a forced stop reaches a computing job) with the same",
            "wasmtime 48.0.8 and the same mechanism as `wasmtime run -W timeout`, so the epoch cost is",
            "measured on `wasmtime run` with it on and off. The second row is the same native program built",
            "without LLVM's x86 tuning that divides by a 32-bit `div` when both operands fit in 32 bits",
            "(Cranelift always emits the 64-bit one, several times slower on most x86 cores). Milliseconds.",
            "",
            "| | time (ms) | / native |",
            "|---|---|---|",
        ]
        for name in names:
            lines.append(f"| {name} | {spread(c[name], 0)} | {ratio(c[name]['median'], native):.3f}x |")
        rounds = r["compute_rounds"]

        def paired(a, b):
            """The median over the rounds of a's time / b's time in the same round."""
            return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))

        epoch = paired(3, 2) - 1
        job_native, job_nodivl, cmd_on = paired(5, 0), paired(5, 1), paired(4, 3)
        lines += [
            "",
            "Ratios are medians over the rounds of the ratio within a round. Epoch interruption costs",
            f"{epoch * 100:+.1f}% (`wasmtime run`, on / off). The runner runs the plain command at {cmd_on:.3f}x",
            "`wasmtime run` with epoch interruption on, and the example job (the SDK's batch loop and its",
            f"checkpoints included) at {job_native:.3f}x native: {job_nodivl:.3f}x the native build that divides as",
            "Cranelift does.",
            "",
        ]
        targets += [
            ("epoch overhead < 3% on primes", f"{epoch * 100:+.1f}%", epoch < 0.03),
            ("primes ≤ 1.3x native", f"{job_native:.3f}x (the example job)", job_native <= 1.3),
        ]

    if "commit" in r:
        lines += [
            "## Checkpoint commit",
            "",
            "`bench/jobs/src/lib.rs` under the runner: `save_bytes` of a SIZE-byte state, timed in the job from",
            "the call to its return (copy into the runner, record encoding, checksum, write, fsync, two renames,",
            "directory fsync). Against `raw-commit` (`bench/native/src/bin/raw-commit.rs`): write a file, fsync,",
            "rename, fsync the directory, natively, in the same directory. Two rounds each way, alternated.",
            "Milliseconds; throughput is SIZE / median.",
            "",
            "| size | n | runner | raw protocol | runner / raw | runner MiB/s | raw MiB/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for size, s in r["commit"].items():
            rr, raw = s["runner"], s["raw"]
            lines.append(
                f"| {human_size(size)} | {rr['n']} | {spread(rr, 3)} | {spread(raw, 3)} | "
                f"{ratio(rr['median'], raw['median']):.2f}x | {size / MIB / (rr['median'] / 1000):.0f} | "
                f"{size / MIB / (raw['median'] / 1000):.0f} |"
            )
        lines.append("")
        smallest, largest = min(r["commit"]), max(r["commit"])
        small = r["commit"][smallest]
        large = r["commit"][largest]
        small_ratio = ratio(small["runner"]["median"], small["raw"]["median"])
        large_throughput = ratio(large["raw"]["median"], large["runner"]["median"])
        targets += [
            (f"{human_size(smallest)} commit ≤ 1.2x the raw protocol", f"{small_ratio:.2f}x", small_ratio <= 1.2),
            (
                f"{human_size(largest)} commit ≥ 0.8x the raw protocol's throughput",
                f"{large_throughput:.2f}x",
                large_throughput >= 0.8,
            ),
        ]

    if "s3" in r:
        lines += [
            "## Checkpoint commit to S3",
            "",
            "The same `save_bytes` as above, timed in the job, with the state kept in a bucket",
            f"(`--state-dir s3://bench/commit`) of {r['s3s_fs_version']}, an S3-compatible server on loopback, on",
            "the same file system; against the local store, two rounds each way, alternated. A commit to S3 is",
            "two PUT requests: the record, then the conditional write (If-Match) of the head that names it.",
            "s3s-fs writes each object to a temporary file and renames it, without fsync: these figures are",
            "the runner's cost and the protocol's round trips, not a real bucket's durability (a real S3 adds",
            "its network round trips to each of the two requests). Milliseconds.",
            "",
            "| size | n | local store | S3 (s3s-fs, loopback) | S3 / local |",
            "|---|---|---|---|---|",
        ]
        for size, s in r["s3"].items():
            local, remote = s["local"], s["s3"]
            lines.append(
                f"| {human_size(size)} | {remote['n']} | {spread(local, 3)} | {spread(remote, 3)} | "
                f"{ratio(remote['median'], local['median']):.2f}x |"
            )
        lines.append("")

    if "python" in r:
        p = r["python"]
        lines += [
            "## A Python job's start",
            "",
            f"`bench/jobs/hello.py` (the Python SDK, built with componentize-py: a {r['python_size'] / MIB:.1f} MiB",
            "component embedding CPython) under the runner; spawn to first output, exit, peak RSS.",
            "",
            "| | n | first output (ms) | exit (ms) | peak RSS (MiB) |",
            "|---|---|---|---|---|",
        ]
        for name, kinds in p.items():
            lines.append(
                f"| {name} | {kinds['first']['n']} | {spread(kinds['first'], 1)} | {spread(kinds['exit'], 1)} | {spread(kinds['rss'], 1)} |"
            )
        lines.append("")

    if "container" in r:
        sizes = r["container_sizes"]
        lines += [
            "## Container: `runc kill TERM` to exit",
            "",
            "The image `deploy/build-image` builds from the static release runner and `primes`, unpacked with umoci",
            "and run by runc (`runc run`, in the foreground) with a bind-mounted state directory and a read-only",
            "root, as `tests/integration/container.rs` runs it. Once the job has saved its first checkpoint,",
            "`runc kill ID TERM`; the time until `runc run` has exited (75: the job saved its place and",
            "suspended). The first row includes `runc kill`'s own start. Milliseconds.",
            "",
            "| from | n | p50 | p99 | min | max |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in r["container"].items():
            cells = " | ".join(fmt(s[stat], 1) for stat in ["median", "p99", "min", "max"])
            lines.append(f"| {name} | {s['n']} | {cells} |")
        lines += [
            "",
            f"Sizes: the static runner {sizes['runner'] / MIB:.1f} MiB as built "
            f"(`x86_64-unknown-linux-musl`, release), {sizes['runner_in_image'] / MIB:.1f} MiB stripped in the image;",
            f"the whole image (OCI layout, compressed layer, config and manifest) {sizes['layout'] / MIB:.1f} MiB.",
            "",
        ]

    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for target, measured, met in targets:
            lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")
        lines.append("")
    return "\n".join(lines)


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
                 "count-primes-native", "count-primes-native-nodivl", "benchjob", "raw-commit", "python-hello", "startup",
                 "static-runner", "image-layout", "s3s-fs"]:
        parser.add_argument(f"--{name}", help=f"path of {name}")
    parser.add_argument("--work", required=True, help="scratch directory (removed first); its file system is measured")
    parser.add_argument("--out", required=True, help="the Markdown report to write")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--start-trials", type=int, default=40)
    parser.add_argument("--python-first-trials", type=int, default=5)
    parser.add_argument("--request-trials", type=int, default=200)
    parser.add_argument("--deadline-trials", type=int, default=100)
    parser.add_argument("--primes-limit", type=int, default=20_000_000)
    parser.add_argument("--compute-runs", type=int, default=7)
    parser.add_argument("--commit-sizes", type=parse_sizes, default=parse_sizes(f"{KIB}:200,{MIB}:50,{64 * MIB}:16"),
                        help="SIZE:COUNT,... (bytes, commits per round)")
    parser.add_argument("--s3-sizes", type=parse_sizes, default=parse_sizes(f"{KIB}:200,{MIB}:50"),
                        help="SIZE:COUNT,... for the s3 section")
    parser.add_argument("--container-trials", type=int, default=20)
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
        "commit": ["runner", "benchjob", "raw_commit"],
        "s3": ["runner", "benchjob", "s3s_fs"],
        "python": ["runner", "python_hello", "startup"],
        "container": ["image_layout", "static_runner"],
    }
    for section in sections:
        for name in needs[section]:
            path = getattr(args, name)
            if not path or not os.path.exists(path):
                parser.error(f"section {section} needs --{name.replace('_', '-')} (got {path!r})")

    began = time.monotonic()
    bench = Bench(args)
    bench.setup()
    for section in SECTIONS:
        if section in sections:
            getattr(bench, section)()
    text = report(bench, args, time.monotonic() - began)
    with open(args.out, "w") as out:
        out.write(text)
    print(text)


if __name__ == "__main__":
    main()
