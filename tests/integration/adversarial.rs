//! What an adversarial pass broke, kept as regression tests: each test names the promise
//! it backs (README.md, "Reliability", lists them).

use std::process::Stdio;

use runner::checkpoint::MAX_STATE_LEN;
use test_guests::TESTJOB;

use crate::util::{Running, SIGTERM, Sandbox};

/// The process's peak resident set size, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// Saves up to the documented limit commit; one byte more gets `too-large`, the committed
/// state stays as it was and the job goes on. (wasmtime's own bound on what one host
/// call copies, 128 MiB by default, trapped the job before.)
#[test]
fn a_save_of_the_limit_commits_and_one_byte_more_is_too_large() {
    let sandbox = Sandbox::new();
    let (limit, over) = (MAX_STATE_LEN.to_string(), (MAX_STATE_LEN + 1).to_string());
    let running = Running::start(
        sandbox
            .runner()
            .args([TESTJOB, "save-sizes", &limit, &over]),
        Stdio::null(),
    );
    running.wait_for_line(&format!("save of {limit} bytes: Ok(())"));
    running.wait_for_line(&format!("save of {over} bytes: Err(TooLarge({limit}))"));
    running.wait_for_line("ready");
    // The job's memory holds one state at a time, the runner's the committed one and the
    // one being saved: well under four.
    let peak = peak_rss(running.pid());
    assert!(
        peak < 4 * MAX_STATE_LEN,
        "the runner peaked at {peak} bytes for saves of {limit} bytes"
    );
    running.signal(SIGTERM);
    running.wait().assert_code(75);
    let record = sandbox.checkpoint("testjob").expect("a checkpoint");
    assert_eq!(record.sequence, 1);
    assert_eq!(record.payload.len() as u64, MAX_STATE_LEN);
    assert!(record.payload.iter().all(|&byte| byte == 7));
}
