//! Stopping a job: a request it honours, and a forced stop at the deadline whether it is
//! computing or blocked in a host call.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{
    PATIENCE, Running, SIGHUP, SIGINT, SIGTERM, Sandbox, assert_second_signal_forces_at_once, run,
    sdk_state, send_signal, wait_until,
};
use test_guests::TESTJOB;

/// Starts `testjob.wasm MODE` with `options` and waits until it says it is ready.
fn start(sandbox: &Sandbox, options: &[&str], mode: &str, stdin: Stdio) -> Running {
    let running = Running::start(sandbox.runner().args(options).args([TESTJOB, mode]), stdin);
    running.wait_for_line("ready");
    running
}

#[test]
fn the_request_reaches_a_job_blocked_on_the_pollable_and_it_suspends() {
    for (signal, reason) in [
        (SIGTERM, "Terminate"),
        (SIGINT, "Interrupt"),
        (SIGHUP, "Hangup"),
    ] {
        let sandbox = Sandbox::new();
        let running = start(&sandbox, &["--grace", "60s"], "wait", Stdio::null());
        running.signal(signal);
        let seen = running.wait_for_line("stop seen by pollable");
        assert!(seen.contains(&format!("reason=Some({reason})")), "{seen}");
        let left_ms: i64 = seen
            .rsplit("time_left_ms=")
            .next()
            .and_then(|ms| ms.parse().ok())
            .expect("time left");
        assert!((1..=60_000).contains(&left_ms), "{seen}");
        let done = running.wait();
        done.assert_code(75);
        done.assert_stderr("job suspended");
        let record = sandbox.checkpoint("testjob").expect("a checkpoint");
        assert!(
            String::from_utf8_lossy(&record.payload).contains("suspended after wait"),
            "{record:?}"
        );
    }
}

#[test]
fn the_request_reaches_a_job_polling_the_flag() {
    let sandbox = Sandbox::new();
    let running = start(&sandbox, &[], "flag", Stdio::null());
    running.signal(SIGTERM);
    running.wait_for_line("stop seen by flag");
    running.wait().assert_code(75);
}

/// A job that ignores the request must be stopped soon after the grace period, and not
/// before it; the checkpoint it committed earlier must survive.
fn assert_forced_at_deadline(mode: &str, stdin: Stdio) {
    let sandbox = Sandbox::new();
    let grace = Duration::from_secs(1);
    let running = start(&sandbox, &["--grace", "1s"], mode, stdin);
    let before = sandbox
        .checkpoint("testjob")
        .expect("the job saved before blocking");
    assert_eq!(
        sdk_state(&before.payload),
        format!(r#"{{"note":"saved before {mode}","runs":1}}"#)
    );
    let signalled = Instant::now();
    running.signal(SIGTERM);
    let done = running.wait();
    let took = signalled.elapsed();
    done.assert_code(143);
    assert!(
        took >= grace - Duration::from_millis(50),
        "stopped before the deadline: {took:?}"
    );
    // The job would have spun, slept or read for an hour.
    assert!(
        took < Duration::from_secs(60),
        "stopped long after the deadline: {took:?}"
    );
    assert!(
        done.stderr
            .contains("the grace period of 1s ran out: stopping the job by force"),
        "{}",
        done.stderr
    );
    assert_eq!(
        sandbox.checkpoint("testjob"),
        Some(before),
        "the last checkpoint changed"
    );
}

#[test]
fn a_computing_job_that_ignores_the_request_is_stopped_at_the_deadline() {
    assert_forced_at_deadline("spin", Stdio::null());
    // The checkpoint committed before spinning is intact and loads in the next run.
    let sandbox = Sandbox::new();
    let running = start(&sandbox, &["--grace", "1s"], "spin", Stdio::null());
    running.signal(SIGTERM);
    running.wait().assert_code(143);
    let shown = run(sandbox.runner().args([TESTJOB, "show"]));
    shown.assert_code(0);
    assert_eq!(shown.stdout, "note=saved before spin runs=1\n");
}

#[test]
fn a_job_blocked_in_sleep_is_stopped_at_the_deadline() {
    assert_forced_at_deadline("sleep", Stdio::null());
}

#[test]
fn a_job_blocked_reading_stdin_is_stopped_at_the_deadline() {
    // A pipe nobody writes to or closes: the read would block forever.
    assert_forced_at_deadline("stdin", Stdio::piped());
}

#[test]
fn a_second_signal_forces_the_stop_at_once_whether_the_job_sleeps_or_computes() {
    assert_second_signal_forces_at_once(TESTJOB, SIGINT, "stop seen by pollable");
}

#[test]
fn timeout_never_forces_a_stop_under_way() {
    // SIGTERM first; --timeout runs out while the job winds down: it must not force.
    let sandbox = Sandbox::new();
    let running = start(
        &sandbox,
        &["--timeout", "1500ms", "--grace", "10m"],
        "slow-suspend",
        Stdio::null(),
    );
    running.signal(SIGTERM);
    running.wait_for_line("reason=Some(Terminate)");
    let done = running.wait();
    done.assert_code(75);
    assert!(
        !done.stderr.contains("stopping the job by force") && !done.stderr.contains("--timeout"),
        "{}",
        done.stderr
    );

    // --timeout first; a SIGTERM while the job winds down is noted, not forcing.
    let sandbox = Sandbox::new();
    let running = start(
        &sandbox,
        &["--timeout", "200ms", "--grace", "10m"],
        "slow-suspend",
        Stdio::null(),
    );
    running.wait_for_line("reason=Some(Timeout)");
    running.signal(SIGTERM);
    let done = running.wait();
    done.assert_code(75);
    assert!(
        done.stderr
            .contains("received SIGTERM: the job is already stopping (--timeout ran out)"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_job_stuck_in_a_call_that_cannot_be_cancelled_is_left_behind_after_the_deadline() {
    // The job writes to a stdout pipe nobody reads: once the pipe is full it is blocked
    // in a synchronous write that neither the epoch nor cancellation can interrupt.
    let sandbox = Sandbox::new();
    let (unread, stdout) = std::io::pipe().expect("pipe");
    let log = sandbox.path().join("termination-log");
    let child = sandbox
        .runner()
        .arg("--termination-log")
        .arg(&log)
        .args(["--grace", "1s", TESTJOB, "flood"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runner");
    let pid = i32::try_from(child.id()).expect("pid");
    wait_until("the job's checkpoint", || sandbox.checkpoint("testjob"));
    let signalled = Instant::now();
    send_signal(pid, SIGTERM);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let Ok(output) = receiver.recv_timeout(PATIENCE) else {
        send_signal(pid, libc::SIGKILL);
        panic!("the runner did not exit");
    };
    let output = output.expect("wait for runner");
    drop(unread);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(60),
        "{:?}",
        signalled.elapsed()
    );
    assert!(stderr.contains("did not stop within 2s"), "{stderr}");
    // The watchdog that exits leaves the run's summary too.
    let summary = std::fs::read_to_string(&log).expect("a summary");
    assert!(
        summary.contains(r#""outcome":"stopped-by-force","exit_code":143"#)
            && summary.contains(r#""checkpoint_sequence":1"#),
        "{summary}"
    );
    assert_eq!(
        sandbox
            .checkpoint("testjob")
            .map(|record| sdk_state(&record.payload)),
        Some(r#"{"note":"saved before flooding","runs":1}"#.to_owned())
    );
}

#[test]
fn timeout_asks_then_forces_and_exits_124() {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let done = run(sandbox
        .runner()
        .args(["--timeout", "1s", "--grace", "500ms", TESTJOB, "spin"]));
    done.assert_code(124);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    done.assert_stderr("--timeout ran out");

    // A job that honours the request suspends instead: 75.
    let done = run(sandbox
        .runner()
        .args(["--timeout", "500ms", TESTJOB, "wait"]));
    done.assert_code(75);
    done.assert_stdout("reason=Some(Timeout)");
}

#[test]
fn sigterm_at_the_first_moment_it_can_be_taken_is_a_request_not_a_death() {
    let sandbox = Sandbox::new();
    let running = start(&sandbox, &[], "wait", Stdio::null());
    // As soon as the runner blocks SIGTERM (the first line of `main`), long before its
    // handlers exist or the job is compiled.
    wait_until("the runner to take SIGTERM", || {
        crate::util::takes_sigterm(running.pid()).then_some(())
    });
    running.signal(SIGTERM);
    let finished = running.wait();
    finished.assert_code(75);
    finished.assert_stderr("received SIGTERM");
}

/// A stop that comes while the job compiles (the Python job's first run takes seconds)
/// ends the run at once, with the code that says nothing ran, rather than when the
/// compile ends; and a slow compile says that it is compiling.
#[test]
fn a_stop_while_the_job_compiles_ends_the_run_at_once() {
    let sandbox = Sandbox::new();
    let summary = sandbox.path().join("summary.json");
    // Stderr to a file, where the test watches for the line that says it is compiling.
    let log = sandbox.path().join("stderr.log");
    let running = Running::start_with_stderr(
        sandbox
            .runner()
            .env("RUNNER_TERMINATION_LOG", &summary)
            .args([test_guests::PYTHON_TESTJOB, "wait"]),
        Stdio::null(),
        std::fs::File::create(&log)
            .expect("create stderr.log")
            .into(),
    );
    let stderr = || std::fs::read_to_string(&log).expect("read stderr.log");
    wait_until("the line that says the job compiles", || {
        stderr().contains("runner: compiling `").then_some(())
    });
    let sent = Instant::now();
    running.signal(SIGTERM);
    let done = running.wait();
    let took = sent.elapsed();
    done.assert_code(75);
    let stderr = stderr();
    for said in [
        "not starting the job: the stop came while it compiled",
        "job not started",
    ] {
        assert!(stderr.contains(said), "{stderr}");
    }
    // Had the run waited for the compile, it would have said so, and the job would
    // have started.
    assert!(!stderr.contains("compiled in"), "{stderr}");
    assert!(done.stdout.is_empty(), "the job ran: {}", done.stdout);
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    let summary = std::fs::read_to_string(&summary).expect("a summary");
    assert!(
        summary.contains(r#""outcome":"not-started","exit_code":75"#),
        "{summary}"
    );
}
