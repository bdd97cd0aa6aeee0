//! Plain WASI commands (the components `wasmtime run` runs): they cannot see the stop
//! request, so they get the grace period and then the forced stop, with the same exit
//! codes as jobs.

use std::process::Stdio;

use test_guests::COMMAND;

use crate::util::{SIGINT, SIGTERM, Sandbox, assert_forced_after_grace, run};

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
        assert_forced_after_grace(COMMAND, mode, signal, code, Stdio::null());
    }
}
