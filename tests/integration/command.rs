//! Plain WASI commands (the components `wasmtime run` runs): they cannot see the stop
//! request, so they get the grace period and then the forced stop, with the same exit
//! codes as jobs.

use std::process::Stdio;
use std::time::{Duration, Instant};

use test_guests::COMMAND;

use crate::util::{PATIENCE, Running, SIGINT, SIGTERM, Sandbox, run};

#[test]
fn a_wasi_command_runs_and_exits_with_its_code() {
    let sandbox = Sandbox::new();
    let hello = run(sandbox.runner().arg(COMMAND));
    hello.assert_code(0);
    assert_eq!(hello.stdout, "hello from a wasi:cli/command\n");
    // WASI 0.2's exit only says success or failure: Rust's `exit(3)` exits 1.
    for (code, exits) in [("0", 0), ("3", 1)] {
        run(sandbox.runner().args([COMMAND, "exit", code])).assert_code(exits);
    }
}

#[test]
fn a_wasi_command_gets_the_grace_then_the_forced_stop() {
    for (mode, signal, code) in [("spin", SIGTERM, 143), ("sleep", SIGINT, 130)] {
        let sandbox = Sandbox::new();
        let running = Running::start(
            sandbox.runner().args(["--grace", "1s", COMMAND, mode]),
            Stdio::null(),
        );
        running.wait_for_line("ready");
        let signalled = Instant::now();
        running.signal(signal);
        let done = running.wait();
        let took = signalled.elapsed();
        done.assert_code(code);
        done.assert_stderr("asking the job to stop");
        assert!(
            took >= Duration::from_secs(1) && took < PATIENCE,
            "{mode}: stopped after {took:?}, not after its 1s of grace"
        );
    }
}
