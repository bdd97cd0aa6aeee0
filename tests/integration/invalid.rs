//! Bad input: exit 2 and one line on stderr that names the problem; nothing committed
//! is lost.

use std::fs;

use crate::util::{Sandbox, bare_runner, run};
use test_guests::{PRIMES, TESTJOB};

/// Runs `args`, expects exit 2 and a single-line error containing every `needle`.
fn assert_rejected(sandbox: &Sandbox, args: &[&str], needles: &[&str]) {
    let done = run(sandbox.runner().args(args));
    done.assert_code(2);
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{}", done.stderr);
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "`{}` does not mention `{needle}`",
            lines[0]
        );
    }
}

#[test]
fn bad_job_files_are_rejected_with_a_line_that_names_the_problem() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path().join("missing.wasm");
    assert_rejected(
        &sandbox,
        &[missing.to_str().expect("utf-8")],
        &["cannot read job", "missing.wasm", "No such file"],
    );

    let text = sandbox.path().join("notes.wasm");
    fs::write(&text, "not wasm at all").expect("write");
    assert_rejected(
        &sandbox,
        &[text.to_str().expect("utf-8")],
        &["notes.wasm", "is not a WebAssembly component or module"],
    );

    // The smallest valid core module (magic and version 1) is no program; a core
    // module cut short is no module.
    let core = sandbox.path().join("core.wasm");
    fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    assert_rejected(
        &sandbox,
        &[core.to_str().expect("utf-8")],
        &["core.wasm", "core module without a `_start` function"],
    );
    let truncated_core = sandbox.path().join("truncated-core.wasm");
    let bytes = fs::read(test_guests::CORE_COMMAND).expect("read core-command");
    fs::write(&truncated_core, &bytes[..bytes.len() / 2]).expect("write");
    assert_rejected(
        &sandbox,
        &[truncated_core.to_str().expect("utf-8")],
        &["truncated-core.wasm", "is not a valid core module"],
    );

    let truncated = sandbox.path().join("truncated.wasm");
    let bytes = fs::read(PRIMES).expect("read primes");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    assert_rejected(
        &sandbox,
        &[truncated.to_str().expect("utf-8")],
        &["truncated.wasm", "is not a valid component"],
    );

    // The smallest valid component: it exports nothing.
    let empty = sandbox.path().join("empty.wasm");
    fs::write(&empty, b"\0asm\x0d\0\x01\0").expect("write");
    assert_rejected(
        &sandbox,
        &[empty.to_str().expect("utf-8")],
        &[
            "empty.wasm",
            "exports neither `run` (a job of the runner:job/job world) nor wasi:cli/run",
            "it exports nothing",
        ],
    );
}

#[test]
fn bad_options_are_usage_errors() {
    let sandbox = Sandbox::new();
    for (args, needle) in [
        (vec!["--grace", "25", TESTJOB], "not a duration"),
        (vec!["--job-id", "../escape", TESTJOB], "not a job id"),
        (vec!["--dir", "/no/such/dir", TESTJOB], "/no/such/dir"),
        (
            vec!["--env", "RUNNER_TEST_UNSET_VAR", TESTJOB],
            "RUNNER_TEST_UNSET_VAR",
        ),
        (vec!["--no-such-flag", TESTJOB], "--no-such-flag"),
        (vec![], "JOB.wasm"),
    ] {
        let done = run(sandbox.runner().args(&args));
        done.assert_code(2);
        assert!(done.stderr.contains(needle), "{args:?}: {}", done.stderr);
    }
}

#[test]
fn an_unusable_state_dir_is_an_error_before_the_job_starts() {
    let sandbox = Sandbox::new();
    let file = sandbox.path().join("a-file");
    fs::write(&file, "").expect("write");
    let done = run(bare_runner()
        .arg("--state-dir")
        .arg(&file)
        .args([TESTJOB, "args"]));
    done.assert_code(2);
    assert!(done.stdout.is_empty(), "the job ran: {}", done.stdout);
    done.assert_stderr("a-file");
    assert_eq!(done.stderr.lines().count(), 1, "{}", done.stderr);
}

#[test]
fn a_corrupt_checkpoint_is_refused_and_left_as_it_was() {
    let sandbox = Sandbox::new();
    let dir = sandbox.state_dir().join("testjob");
    fs::create_dir_all(&dir).expect("mkdir");
    let checkpoint = dir.join("checkpoint");
    fs::write(
        &checkpoint,
        b"RUNRCKPT\x01\0\x28\0 this is not a valid record",
    )
    .expect("write");
    let done = run(sandbox.runner().args([TESTJOB, "show"]));
    done.assert_code(2);
    assert!(done.stdout.is_empty(), "the job ran: {}", done.stdout);
    done.assert_stderr(&checkpoint.to_string_lossy());
    assert_eq!(
        fs::read(&checkpoint).expect("still there"),
        b"RUNRCKPT\x01\0\x28\0 this is not a valid record"
    );
}
