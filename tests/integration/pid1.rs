//! The runner as PID 1 of a real PID namespace, where the kernel drops any signal that
//! has no handler: it must still turn SIGTERM into a shutdown request.

use std::process::{Command, Stdio};

use crate::util::{Running, SIGTERM, Sandbox, send_signal};
use test_guests::TESTJOB;

#[test]
fn as_pid_1_in_a_pid_namespace_sigterm_suspends_the_job() {
    let sandbox = Sandbox::new();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_runner"))
        .arg("--state-dir")
        .arg(sandbox.state_dir())
        .args([TESTJOB, "wait"])
        .env_remove("RUNNER_GRACE");
    let unshare = Running::start(&mut command, Stdio::null());
    unshare.wait_for_line("ready");

    // unshare forks the runner into the namespace: find it, and check it is PID 1 there.
    let runner = unshare.child_pid();
    let status = std::fs::read_to_string(format!("/proc/{runner}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|line| line.starts_with("NSpid:"))
        .expect("NSpid line");
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "the runner is not PID 1 in its namespace: {nspid}"
    );

    send_signal(runner, SIGTERM);
    let done = unshare.wait();
    // unshare exits with its child's status.
    done.assert_code(75);
    done.assert_stdout("reason=Some(Terminate)");
}
