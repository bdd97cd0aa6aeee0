//! Core modules (wasm32-wasip1 programs), run natively through WASI preview 1: a plain
//! Rust program as `wasmtime run` runs it, and jobs through `runner_job_v1` in Rust and
//! in C (`examples/c-primes`), with the same stop, exit codes and checkpoints as
//! components.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use test_guests::{
    C_NO_MEMORY, C_PRIMES, C_SEQUENCE, C_UNKNOWN_FUNCTION, C_UNKNOWN_IMPORT, C_WRONG_SIGNATURE,
    CORE_COMMAND, CORE_JOB, PRIMES,
};

use crate::crash::strace;
use crate::util::{
    Running, SIGHUP, SIGINT, SIGKILL, SIGTERM, Sandbox, assert_forced_after_grace,
    assert_second_signal_forces_at_once, primes_below, run,
};

#[test]
fn a_wasip1_program_runs_as_wasmtime_runs_it() {
    let sandbox = Sandbox::new();
    // A plain program runs again on every run: nothing is recorded.
    for _ in 0..2 {
        let hello = run(sandbox.runner().arg(CORE_COMMAND));
        hello.assert_code(0);
        assert_eq!(hello.stdout, "hello from a wasip1 program\n");
    }
    let args = run(sandbox
        .runner()
        .args([CORE_COMMAND, "args", "a b", "", "c"]));
    assert_eq!(args.stdout, "a b||c\n");
    let env = run(sandbox.runner().args([
        "--env",
        "GREETING=hi there",
        CORE_COMMAND,
        "env",
        "GREETING",
    ]));
    assert_eq!(env.stdout, "GREETING=hi there\n");
    run(sandbox.runner().args([CORE_COMMAND, "env", "HOME"])).assert_stdout("HOME is not set");
    run(sandbox.runner().args([CORE_COMMAND, "stderr"])).assert_stderr("to stderr");

    // Files in a --dir read and written.
    let data = sandbox.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("in.txt"), "some text\n").expect("write");
    let copied = run(sandbox
        .runner()
        .arg("--dir")
        .arg(format!("{}::/data", data.display()))
        .args([CORE_COMMAND, "copy", "/data/in.txt", "/data/out.txt"]));
    copied.assert_code(0).assert_stdout("copied 10 bytes");
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).expect("the output"),
        "SOME TEXT\n"
    );

    // proc_exit(n) exits n (WASI 0.2's exit says only success or failure); from 126,
    // which shells keep for themselves, it is an error (wasmtime's preview 1 traps), as
    // under `wasmtime run`.
    for code in [0, 3, 33, 75, 125] {
        let exited = run(sandbox
            .runner()
            .args([CORE_COMMAND, "exit", &code.to_string()]));
        exited.assert_code(code);
    }
    run(sandbox.runner().args([CORE_COMMAND, "exit", "126"]))
        .assert_code(134)
        .assert_stderr("invalid exit status");
    let trapped = run(sandbox.runner().args([CORE_COMMAND, "trap"]));
    trapped
        .assert_code(134)
        .assert_stderr("the program panicked on purpose")
        .assert_stderr("job trapped");

    let mut echo = sandbox.runner();
    echo.args([CORE_COMMAND, "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = echo.spawn().expect("start runner");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin piped"),
        b"first\nsecond\n",
    )
    .expect("write stdin");
    let echoed = child.wait_with_output().expect("wait for runner");
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout),
        "1: first\n2: second\n"
    );
    assert!(echoed.status.success(), "{echoed:?}");
}

#[test]
fn a_wasip1_program_gets_the_grace_then_the_forced_stop() {
    // Computing, sleeping in poll_oneoff, and blocked reading stdin (held open and
    // never written).
    for (mode, signal, code) in [
        ("spin", SIGTERM, 143),
        ("sleep", SIGINT, 130),
        ("read", SIGHUP, 129),
    ] {
        assert_forced_after_grace(CORE_COMMAND, mode, signal, code, Stdio::piped());
    }
}

#[test]
fn a_second_signal_stops_a_core_job_at_once_whether_it_sleeps_or_computes() {
    assert_second_signal_forces_at_once(CORE_JOB, SIGTERM, "stop seen");
}

#[test]
fn a_wasip1_program_keeps_its_job_id_s_lock_its_timeout_and_json_logs() {
    let sandbox = Sandbox::new();
    let running = Running::start(
        sandbox
            .runner()
            .args(["--timeout", "2s", "--grace", "1s", CORE_COMMAND, "sleep"]),
        Stdio::null(),
    );
    running.wait_for_line("ready");
    // One run at a time per job id, a plain program too.
    let second = run(sandbox
        .runner()
        .args(["--lock-timeout", "300ms", CORE_COMMAND]));
    second.assert_code(69).assert_stderr("--lock-timeout");
    running.wait().assert_code(124);

    // With JSON logs the program's lines become objects, as a component's do.
    let logged = run(sandbox
        .runner()
        .args(["--log-format", "json", CORE_COMMAND, "stderr"]));
    logged.assert_code(0);
    assert!(
        logged
            .stderr
            .lines()
            .any(|line| line.contains(r#""stream":"stderr","message":"to stderr""#)),
        "{}",
        logged.stderr
    );
}

#[test]
fn a_job_that_ignores_the_request_is_stopped_at_the_deadline() {
    for mode in ["ignore", "sleep"] {
        let sandbox = Sandbox::new();
        let running = Running::start(
            sandbox.runner().args(["--grace", "1s", CORE_JOB, mode]),
            Stdio::null(),
        );
        running.wait_for_line("ready");
        let signalled = Instant::now();
        running.signal(SIGTERM);
        let done = running.wait();
        done.assert_code(143);
        assert!(signalled.elapsed() >= Duration::from_secs(1), "{mode}");
    }
}

#[test]
fn a_job_sees_the_request_its_reason_and_deadline_and_suspends_with_75() {
    let sandbox = Sandbox::new();
    let summary = sandbox.path().join("summary.json");
    let running = Running::start(
        sandbox
            .runner()
            .arg("--termination-log")
            .arg(&summary)
            .args(["--grace", "30s", CORE_JOB, "wait"]),
        Stdio::null(),
    );
    running.wait_for_line("ready");
    running.signal(SIGTERM);
    let done = running.wait();
    done.assert_code(75)
        .assert_stderr("job suspended on request");
    assert_eq!(
        done.stdout,
        "before: (0, 0, -1)\nready\nwoken: 1\nreason 1, requested 1, deadline within 30 s: \
         true, timed wait: 1\n"
    );
    let summary = std::fs::read_to_string(&summary).expect("a summary");
    assert!(summary.contains(r#""outcome":"suspended""#), "{summary}");

    // Without a request, a timed wait times out.
    let timed = run(sandbox
        .runner()
        .args(["--job-id", "t", CORE_JOB, "timeout"]));
    timed.assert_code(0).assert_stdout("timed out: true");
}

#[test]
fn a_job_s_exit_code_says_completed_suspended_or_exited() {
    let sandbox = Sandbox::new();
    let job = |id: &str, code: &str| {
        run(sandbox
            .runner()
            .args(["--job-id", id, CORE_JOB, "exit", code]))
    };
    job("zero", "0").assert_code(0);
    // Completion is recorded: the job does not run again.
    job("zero", "3")
        .assert_code(0)
        .assert_stderr("job `zero` completed");
    job("seventy-five", "75")
        .assert_code(75)
        .assert_stderr("job suspended");
    job("seventy-five", "3").assert_code(3);
    // Returning from main is completing, too.
    let ran = run(sandbox.runner().args(["--job-id", "abi", CORE_JOB, "abi"]));
    ran.assert_code(0);
    run(sandbox.runner().args(["--job-id", "abi", CORE_JOB, "abi"]))
        .assert_code(0)
        .assert_stderr("job `abi` completed");
}

#[test]
fn the_abi_checks_every_pointer_and_length_and_says_what_failed() {
    let sandbox = Sandbox::new();
    let ran = run(sandbox.runner().args([CORE_JOB, "abi"]));
    ran.assert_code(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let expected = [
        "size before a save: -1",
        "load without a checkpoint: 4 (the job has no checkpoint)",
        // The memory's size is the build's.
        "save outside memory: 5 (16 bytes at 4294967295 are outside the module's memory of ",
        "save of a negative length: 5",
        "size after a save: 5",
        "load into 8 bytes: 5 (checkpoint_load was given 8 bytes for a checkpoint of 5 bytes)",
        "load: Ok(\"hello\")",
        "error_copy of 3: 3 [99, 104, 101]",
        "outside memory: error_copy -1, load 5",
    ];
    assert_eq!(lines.len(), expected.len(), "{}", ran.stdout);
    for (line, expected) in lines.iter().zip(expected) {
        assert!(line.starts_with(expected), "{line:?} is not {expected:?}");
    }
    ran.assert_stderr("progress 7/10 (70.0%)");
    // The record holds what the job saved, then its completion.
    let record = sandbox.checkpoint("core-job").expect("a checkpoint");
    assert!(record.completed);
    assert_eq!(record.payload, b"hello");
}

/// Runs `runner ARGS...` under `sandbox`, stops it with SIGTERM once it has committed a
/// checkpoint, and checks that it suspended (75) with one.
fn suspend_once_saved(sandbox: &Sandbox, job_id: &str, args: &[&str]) {
    let running = Running::start(sandbox.runner().args(args), Stdio::null());
    crate::util::wait_until("a checkpoint", || sandbox.checkpoint(job_id));
    running.signal(SIGTERM);
    let done = running.wait();
    done.assert_code(75).assert_stderr("job suspended");
    assert!(!sandbox.checkpoint(job_id).expect("a checkpoint").completed);
}

#[test]
fn a_rust_wasip1_job_stopped_with_sigterm_resumes_to_the_exact_answer() {
    let sandbox = Sandbox::new();
    let whole = run(sandbox
        .runner()
        .args(["--job-id", "whole", CORE_JOB, "count", "3000"]));
    whole.assert_code(0);
    assert!(whole.stdout.contains("\ncount 3000: "), "{}", whole.stdout);

    let interrupted = Sandbox::new();
    suspend_once_saved(&interrupted, "core-job", &[CORE_JOB, "count", "3000"]);
    let resumed = run(interrupted.runner().args([CORE_JOB, "count", "3000"]));
    resumed
        .assert_code(0)
        .assert_stderr("resuming job `core-job` from checkpoint");
    assert_eq!(resumed.stdout, whole.stdout);
    run(interrupted.runner().args([CORE_JOB, "count", "3000"]))
        .assert_code(0)
        .assert_stderr("completed");
}

#[test]
fn the_c_job_prints_what_the_rust_primes_prints_and_resumes_to_it() {
    let limit = 20_000_000;
    let expected = format!("primes below {limit}: {}\n", primes_below(limit));
    let sandbox = Sandbox::new();
    suspend_once_saved(&sandbox, "c-primes", &[C_PRIMES, &limit.to_string()]);
    let resumed = run(sandbox.runner().args([C_PRIMES, &limit.to_string()]));
    resumed
        .assert_code(0)
        .assert_stderr("resuming job `c-primes` from checkpoint");
    assert_eq!(resumed.stdout, expected);

    // The Rust twin, and both sharded, say the same.
    let rust = run(sandbox
        .runner()
        .args(["--job-id", "rust", PRIMES, "1000000"]));
    let c = run(sandbox
        .runner()
        .args(["--job-id", "c", C_PRIMES, "1000000"]));
    assert_eq!(c.stdout, "primes below 1000000: 78498\n");
    assert_eq!(c.stdout, rust.stdout);
    for index in ["0", "2"] {
        let shard = |name: &str, job: &str| {
            run(sandbox
                .runner()
                .args(["--job-id", &format!("{name}-{index}"), "--env"])
                .arg(format!("JOB_COMPLETION_INDEX={index}"))
                .args([job, "1000000", "3"]))
        };
        let (rust, c) = (shard("rust", PRIMES), shard("c", C_PRIMES));
        c.assert_code(0);
        assert_eq!(c.stdout, rust.stdout);
    }
    let bad = run(sandbox.runner().args(["--job-id", "bad", C_PRIMES, "lots"]));
    bad.assert_code(1)
        .assert_stderr("LIMIT `lots` is not a whole number");
}

#[test]
fn a_c_job_writing_through_a_buffered_file_loses_and_repeats_no_line() {
    // Killed with SIGKILL and stopped with SIGTERM, each after a new checkpoint, in
    // turns; then run to its end: `out.txt` holds 1..=LINES once each, in order.
    const LINES: u64 = 1500;
    let sandbox = Sandbox::new();
    let sequence = || {
        let mut command = sandbox.runner();
        command
            .arg("--output")
            .arg(format!("{}::/out", sandbox.output_dir().display()))
            .args([C_SEQUENCE, &LINES.to_string()]);
        command
    };
    let mut last = 0;
    for (round, signal) in [SIGKILL, SIGTERM, SIGKILL, SIGTERM].into_iter().enumerate() {
        let mut running = Running::start(&mut sequence(), Stdio::null());
        sandbox.wait_for_checkpoint_after(&mut running, "c-sequence", last);
        running.signal(signal);
        let done = running.wait();
        let expected = if signal == SIGKILL { None } else { Some(75) };
        assert_eq!(done.status.code(), expected, "round {round}: {done:?}");
        last = sandbox
            .checkpoint("c-sequence")
            .map_or(0, |record| record.sequence);
    }
    run(&mut sequence()).assert_code(0);
    let check = sandbox.check_sequence_output(LINES);
    assert!(check.is_exact(LINES), "{check:?}");
}

#[test]
fn a_kill_during_a_core_job_s_save_leaves_the_old_or_the_new_state() {
    // (job, its arguments, its id): the second commit's temporary file, killed as it is
    // written and as it is renamed into place, leaves the first; the third's, the
    // second. A resumed run then completes with the answer of a run never killed.
    let count = ["count", "3000"];
    // Long enough for three commits at one a second on a fast machine.
    let limit = 40_000_000usize;
    let limit_arg = limit.to_string();
    let jobs: [(&str, &[&str], &str); 2] = [
        (CORE_JOB, &count, "core-job"),
        (C_PRIMES, &[limit_arg.as_str()], "c-primes"),
    ];
    let whole = run(Sandbox::new().runner().arg(CORE_JOB).args(count));
    for (job, args, id) in jobs {
        let expected = if job == CORE_JOB {
            whole.stdout.clone()
        } else {
            format!("primes below {limit}: {}\n", primes_below(limit))
        };
        for (syscall, sequence, left) in [("writev", 2, 1), ("renameat", 2, 1), ("writev", 3, 2)] {
            let sandbox = Sandbox::new();
            let file = sandbox
                .job_dir(id)
                .join(format!(".tmp.checkpoint.1.{sequence}"));
            let mut runner = sandbox.runner();
            runner.arg(job).args(args);
            let killed = run(&mut strace(syscall, Some(&file), 1, "signal=KILL", &runner));
            assert_eq!(
                killed.status.signal(),
                Some(libc::SIGKILL),
                "{id}: {syscall} of commit {sequence}: not killed: {killed:?}"
            );
            let record = sandbox.checkpoint(id).expect("a whole checkpoint");
            assert_eq!(
                record.sequence, left,
                "{id}: {syscall} of commit {sequence}"
            );
            let resumed = run(sandbox.runner().arg(job).args(args));
            resumed.assert_code(0);
            assert_eq!(
                resumed.stdout, expected,
                "{id}: {syscall} of commit {sequence}"
            );
        }
    }
}

#[test]
fn a_core_module_with_an_import_the_runner_lacks_is_refused_naming_it() {
    let sandbox = Sandbox::new();
    for (module, names) in [
        (
            C_UNKNOWN_IMPORT,
            "`env::launch_missiles` has not been defined",
        ),
        (
            C_UNKNOWN_FUNCTION,
            "`runner_job_v1::teleport` has not been defined",
        ),
        (
            C_WRONG_SIGNATURE,
            "a wrong type for `runner_job_v1::checkpoint_save`: the module imports it as \
             `(func (param i64) (result i64))`, the runner provides `(func (param i32 i32) \
             (result i32))`",
        ),
    ] {
        let refused = run(sandbox.runner().arg(module));
        refused.assert_code(2).assert_stderr(names);
        assert!(refused.stdout.is_empty());
    }
    // A job's pointers point into its memory: one that exports none is refused too.
    run(sandbox.runner().arg(C_NO_MEMORY))
        .assert_code(2)
        .assert_stderr("imports runner_job_v1 but exports no memory named `memory`");
    // Nothing ran, and nothing was left behind in the state directory.
    for job in ["unknown-import", "unknown-function", "wrong-signature"] {
        assert!(
            !sandbox.job_dir(job).exists(),
            "{job} left its job directory"
        );
    }
}

#[test]
fn a_core_module_is_cached_and_compiled_like_a_component() {
    let sandbox = Sandbox::new();
    let entries = || -> Vec<(std::path::PathBuf, u64)> {
        std::fs::read_dir(sandbox.cache_dir())
            .expect("the cache")
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "cwasm"))
            .map(|entry| (entry.path(), entry.metadata().expect("metadata").ino()))
            .collect()
    };
    run(sandbox.runner().args([CORE_COMMAND, "args", "x"])).assert_stdout("x");
    let cached = entries();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // The second run loads that entry: a compile would have replaced it (a new file).
    run(sandbox.runner().args([CORE_COMMAND, "args", "y"])).assert_stdout("y");
    assert_eq!(entries(), cached);

    let compiled = sandbox.path().join("job.cwasm");
    run(crate::util::bare_runner()
        .args(["compile", CORE_JOB, "-o"])
        .arg(&compiled))
    .assert_code(0);
    let ran = run(sandbox.runner().arg(&compiled).args(["count", "10"]));
    ran.assert_code(0).assert_stdout("count 10: ");
    // A compiled job keeps the .wasm's identity: its checkpoints are the .wasm's.
    let record = sandbox.checkpoint("job").expect("a checkpoint");
    let digest = sha256_of(CORE_JOB);
    assert_eq!(record.module_digest, digest);
}

/// The SHA-256 of the file at `path`, with sha256sum.
fn sha256_of(path: &str) -> [u8; 32] {
    let out = run(std::process::Command::new("sha256sum").arg(path));
    let hex = out
        .stdout
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned();
    let mut digest = [0; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    digest
}
