//! One owner per job: two runners on one job, as Kubernetes makes them (the old pod
//! still terminating while its replacement starts).

use std::fs;
use std::process::Stdio;

use test_guests::TESTJOB;

use crate::util::{Running, SIGTERM, Sandbox, run, sdk_state};

#[test]
fn a_replacement_waits_for_the_terminating_runner_then_resumes_its_state() {
    let sandbox = Sandbox::new();
    // The old pod: asked to stop, it takes two seconds to wind down and save.
    let old = Running::start(
        sandbox.runner().args([TESTJOB, "slow-suspend"]),
        Stdio::null(),
    );
    old.wait_for_line("ready");
    old.signal(SIGTERM);
    // The replacement starts while the old one still holds the job.
    let new = Running::start(
        sandbox
            .runner()
            .args(["--lock-timeout", "2m", TESTJOB, "show"]),
        Stdio::null(),
    );
    old.wait().assert_code(75);
    let new = new.wait();
    new.assert_code(0);
    assert!(
        new.stderr.contains("waiting up to 2m") && new.stderr.contains("took the lock"),
        "{}",
        new.stderr
    );
    // It saw the state the old runner saved while it waited, not an older one.
    new.assert_stdout("note=suspended slowly runs=1");
}

#[test]
fn a_runner_gives_up_on_a_held_lock_after_the_lock_timeout() {
    let sandbox = Sandbox::new();
    let owner = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    owner.wait_for_line("ready");
    let second = run(sandbox
        .runner()
        .args(["--lock-timeout", "300ms", TESTJOB, "show"]));
    second.assert_code(69);
    assert!(
        second.stderr.contains(&format!("pid {}", owner.pid()))
            && second.stderr.contains("--lock-timeout"),
        "{}",
        second.stderr
    );
    assert!(second.stdout.is_empty(), "the job ran: {}", second.stdout);
    // The owner never noticed.
    owner.signal(SIGTERM);
    owner.wait().assert_code(75);
    let record = sandbox.checkpoint("testjob").expect("checkpoint");
    assert_eq!(record.fence, 1);
}

#[test]
fn a_runner_that_lost_the_job_is_fenced_and_stopped() {
    let sandbox = Sandbox::new();
    let old = Running::start(
        sandbox.runner().args([TESTJOB, "save-every"]),
        Stdio::null(),
    );
    old.wait_for_line("ready");
    // The lock does not hold (as on a shared volume that ignores flock): its file goes,
    // and a second runner takes the job.
    fs::remove_file(sandbox.job_dir("testjob").join("lock")).expect("remove the lock file");
    let new = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    new.wait_for_line("ready");

    // The old runner's next save is refused, and its job stopped at once.
    let old = old.wait();
    old.assert_code(69);
    old.assert_stderr(
        "checkpoint not saved: another runner has taken this job over: this run's \
             fencing number is 1, the newest is 2",
    );

    new.signal(SIGTERM);
    new.wait().assert_code(75);
    let record = sandbox.checkpoint("testjob").expect("checkpoint");
    assert_eq!(record.fence, 2, "{record:?}");
    assert_eq!(
        sdk_state(&record.payload),
        r#"{"note":"suspended after wait","runs":2}"#
    );
}

#[test]
fn a_stop_while_waiting_for_the_lock_ends_the_wait_without_running_the_job() {
    let sandbox = Sandbox::new();
    let owner = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    owner.wait_for_line("ready");
    let waiting = Running::start(
        sandbox
            .runner()
            .args(["--lock-timeout", "10m", TESTJOB, "show"]),
        Stdio::null(),
    );
    // Whenever the stop comes before the lock is free (and the owner keeps it), the
    // job must not start.
    crate::util::wait_until("the second runner to take SIGTERM", || {
        crate::util::takes_sigterm(waiting.pid()).then_some(())
    });
    waiting.signal(SIGTERM);
    let waited = waiting.wait();
    waited.assert_code(75);
    waited.assert_stderr("not starting the job");
    assert!(waited.stdout.is_empty(), "the job ran: {}", waited.stdout);
    owner.signal(SIGTERM);
    owner.wait().assert_code(75);
}
