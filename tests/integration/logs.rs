//! What the runner says: readable lines or JSON lines on stderr, a progress bar on a
//! terminal, and the run's summary in the termination log.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use test_guests::{PRIMES, TESTJOB};

use crate::util::{Running, SIGTERM, Sandbox, run};

#[test]
fn json_logs_are_one_object_per_line() {
    let sandbox = Sandbox::new();
    let running = Running::start(
        sandbox
            .runner()
            .args(["--log-format", "json", TESTJOB, "flag"]),
        Stdio::null(),
    );
    running.wait_for_line("ready");
    running.signal(SIGTERM);
    let done = running.wait();
    done.assert_code(75);
    let lines: Vec<Value> = done
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("`{line}`: {error}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].as_str().is_some(), "{line}");
        assert!(line["level"].as_str().is_some(), "{line}");
        assert!(line["message"].as_str().is_some(), "{line}");
    }
    let said = |needle: &str| {
        lines
            .iter()
            .find(|line| line["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no `{needle}` in {lines:?}"))
    };
    assert_eq!(said("received SIGTERM")["level"], "INFO");
    assert_eq!(said("job suspended")["level"], "INFO");

    // Errors are errors, and a progress line carries its numbers as fields.
    let failed = run(sandbox
        .runner()
        .args(["--log-format=json", TESTJOB, "error"]));
    failed.assert_code(1);
    // (After a line saying that it resumes from the checkpoint the first run saved.)
    let line: Value =
        serde_json::from_str(failed.stderr.lines().last().expect("a line")).expect("JSON");
    assert_eq!(line["level"], "ERROR", "{}", failed.stderr);
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("the disk is on fire"))
    );
    let counted = run(sandbox.runner().args(["--log-format=json", PRIMES, "1000"]));
    counted.assert_code(0);
    let progress: Value =
        serde_json::from_str(counted.stderr.lines().next().expect("a line")).expect("JSON");
    assert_eq!(progress["message"], "progress 0/1000 (0.0%)");
    assert_eq!(progress["done"], 0);
    assert_eq!(progress["total"], 1000);
}

#[test]
fn progress_lines_come_at_most_every_few_seconds_off_a_terminal() {
    let sandbox = Sandbox::new();
    let start = Instant::now();
    // Reports progress thousands of times a second, for more than 5 seconds.
    let done = run(sandbox.runner().args([PRIMES, "50000000"]));
    let seconds = start.elapsed().as_secs();
    done.assert_code(0);
    let lines = done
        .stderr
        .lines()
        .filter(|line| line.starts_with("runner: progress "))
        .count();
    assert!(lines >= 2 || seconds < 6, "{}", done.stderr);
    // One every 5 seconds from the first, and where the job ended when it completes.
    assert!(
        lines as u64 <= seconds / 5 + 2,
        "{lines} progress lines in {seconds}s:\n{}",
        done.stderr
    );
}

#[test]
fn on_a_terminal_progress_is_a_bar() {
    let sandbox = Sandbox::new();
    // `script` runs the runner on a pseudo-terminal and copies what it shows.
    let command = format!(
        "{} --state-dir {} {PRIMES} 20000000",
        env!("CARGO_BIN_EXE_runner"),
        sandbox.state_dir().display()
    );
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env_remove("RUNNER_LOG_FORMAT")
        .env("RUNNER_TERMINATION_LOG", "/dev/null")
        .env("RUNNER_CACHE_DIR", sandbox.cache_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(shown.contains("primes below 20000000: 1270607"), "{shown}");
    // The bar, redrawn in place (carriage return, erase the line).
    assert!(shown.contains("/20000000 ("), "{shown}");
    assert!(
        shown.contains("\r\x1b[2Krunner: "),
        "not redrawn: {shown:?}"
    );
    // The job's line is not written into the bar: the bar is erased first.
    assert!(
        shown.contains("\x1b[2Kprimes below 20000000: 1270607"),
        "{shown:?}"
    );
    assert!(
        !shown.contains("runner: progress "),
        "progress lines as well: {shown}"
    );
}

/// The summary in the termination log `path`.
fn read_summary(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("a summary");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("`{text}`: {error}"))
}

#[test]
fn the_summary_goes_to_the_termination_log() {
    let sandbox = Sandbox::new();
    let log = sandbox.path().join("termination-log");
    let failed = run(sandbox
        .runner()
        .arg("--termination-log")
        .arg(&log)
        .args([TESTJOB, "error"]));
    failed.assert_code(1);
    let summary = read_summary(&log);
    assert_eq!(summary["outcome"], "job-error", "{summary}");
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(summary["job_id"], "testjob");
    assert_eq!(summary["stop_reason"], Value::Null);
    assert!(
        summary["message"]
            .as_str()
            .is_some_and(|m| m.contains("the disk is on fire")),
        "{summary}"
    );

    // A run refused before the job starts leaves one too, from the environment's path.
    let refused = run(sandbox
        .runner()
        .env("RUNNER_TERMINATION_LOG", &log)
        .args(["--job-id", "no/such", TESTJOB]));
    refused.assert_code(2);
    let summary = read_summary(&log);
    assert_eq!(summary["outcome"], "error", "{summary}");
    assert_eq!(summary["exit_code"], 2);

    // A command line that does not parse leaves one too (the options were not read: the
    // path comes from the environment).
    std::fs::remove_file(&log).expect("remove the log");
    let refused = run(sandbox
        .runner()
        .env("RUNNER_TERMINATION_LOG", &log)
        .args(["--grace", "soon", TESTJOB]));
    refused.assert_code(2);
    let summary = read_summary(&log);
    assert_eq!(summary["outcome"], "error", "{summary}");
    assert!(
        summary["message"]
            .as_str()
            .is_some_and(|m| m.contains("'soon' for '--grace <DURATION>'")),
        "{summary}"
    );

    // A log that cannot be written is reported; the run's own exit code stands.
    let unwritable = sandbox.path().join("no-such-dir/termination-log");
    let done = run(sandbox
        .runner()
        .arg("--termination-log")
        .arg(&unwritable)
        .args([PRIMES, "1000"]));
    done.assert_code(0).assert_stderr(&format!(
        "cannot write the run's summary to --termination-log `{}`",
        unwritable.display()
    ));
}
