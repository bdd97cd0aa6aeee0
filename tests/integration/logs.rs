//! What the runner says: readable lines or JSON lines on stderr, a progress bar on a
//! terminal, and the run's summary in the termination log.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_guests::{PRIMES, TESTJOB};

use crate::util::{Running, SIGTERM, Sandbox, run, wait_until};

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

/// Parses each line of `text` as a JSON object.
fn objects(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("`{line}`: {error}")))
        .collect()
}

/// With JSON logs the job's own lines are objects too, whole and in order, on the stream
/// the job wrote them to; its stderr lines in order with the runner's.
#[test]
fn json_logs_carry_the_jobs_lines_whole_and_in_order() {
    let sandbox = Sandbox::new();
    let summary_path = sandbox.path().join("summary.json");
    let done = run(sandbox
        .runner()
        .arg("--termination-log")
        .arg(&summary_path)
        .args(["--log-format", "json", TESTJOB, "mixed-output"]));
    done.assert_code(0);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).expect("summary"))
            .expect("JSON");
    let run_id = summary["run_id"].as_str().expect("a run id");
    assert_eq!(run_id.len(), 16, "{summary}");
    let (out, err) = (objects(&done.stdout), objects(&done.stderr));
    for line in out.iter().chain(&err) {
        assert_eq!(line["run_id"], run_id, "{line}");
        assert!(line["timestamp"].as_str().is_some(), "{line}");
    }
    let job_lines = |lines: &[Value], stream: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|line| line["stream"] == stream)
            .cloned()
            .collect()
    };
    // Every object on stdout is a line the job wrote there.
    let stdout = job_lines(&out, "stdout");
    assert_eq!(stdout.len(), out.len(), "{}", done.stdout);
    for line in &stdout {
        assert_eq!(line["job_id"], "testjob", "{line}");
        assert!(line.get("level").is_none(), "{line}");
    }
    let text = |line: &Value| line["message"].as_str().expect("a message").to_owned();
    let long = format!("a{}", "é".repeat(10_000));
    assert_eq!(text(&stdout[0]), "out 1");
    assert_eq!(text(&stdout[1]), "out 2");
    // A line written in two parts is one object.
    assert_eq!(text(&stdout[2]), "partial");
    // A long line goes in pieces of at most 8 KiB, cut between characters, each but the
    // last marked partial.
    let pieces = &stdout[3..stdout.len() - 1];
    assert!(pieces.len() >= 3, "{pieces:?}");
    for (n, piece) in pieces.iter().enumerate() {
        assert!(text(piece).len() <= 8192, "{}", text(piece).len());
        let partial = n + 1 < pieces.len();
        assert_eq!(piece.get("partial").is_some(), partial, "{piece}");
    }
    assert_eq!(pieces.iter().map(text).collect::<String>(), long);
    // The last line, which the job never ended, when the job ended.
    let last = stdout.last().expect("a line");
    assert_eq!(text(last), "no newline at the end");
    assert!(last.get("partial").is_none(), "{last}");

    // On stderr, the job's lines in order among the runner's.
    let said: Vec<String> = err
        .iter()
        .map(|line| match line["stream"].as_str() {
            Some(stream) => format!("{stream}: {}", text(line)),
            None => format!(
                "runner {}: {}",
                line["level"].as_str().expect("level"),
                text(line)
            ),
        })
        .collect();
    let at = |wanted: &str| {
        said.iter()
            .position(|line| line == wanted)
            .unwrap_or_else(|| panic!("no `{wanted}` in {said:#?}"))
    };
    let order = [
        at("stderr: err 1"),
        at("stderr: err 2"),
        at(r"stderr: bad \xff\xfe byte \\ here"),
        at("stderr: before progress"),
        at("runner INFO: progress 1/2 (50.0%)"),
        at("stderr: after progress"),
    ];
    assert!(order.is_sorted(), "{said:#?}");
    // Bytes that are not UTF-8 are escaped, and said so.
    let bad = &err[order[2]];
    assert_eq!(bad["escaped"], true, "{bad}");
    assert!(err[order[0]].get("escaped").is_none());
    // The runner's lines carry the job and the run too.
    assert_eq!(err[order[4]]["job_id"], "testjob");
    assert_eq!(err[order[4]]["done"], 1);

    // With text logs, the job's stdout is its own, byte for byte.
    let plain = sandbox
        .runner()
        .args(["--start-over", TESTJOB, "mixed-output"])
        .stdin(Stdio::null())
        .output()
        .expect("run the runner");
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(
        plain.stdout,
        format!("out 1\nout 2\npartial\n{long}\nno newline at the end").as_bytes()
    );
    // The runner's own lines may come between the job's: without `--output` it starts
    // the job while it claims the state (and says it starts over).
    let stderr: Vec<u8> = plain
        .stderr
        .split_inclusive(|&byte| byte == b'\n')
        .filter(|line| !line.starts_with(b"runner: "))
        .flatten()
        .copied()
        .collect();
    let wanted: &[u8] = b"err 1\nerr 2\nbad \xff\xfe byte \\ here\nbefore progress\n";
    assert!(
        stderr.windows(wanted.len()).any(|window| window == wanted),
        "{}",
        String::from_utf8_lossy(&stderr)
    );
}

/// A job that writes to stderr faster than stderr is read does not crowd the runner's
/// own lines out of the queue they share: the stop's lines are all there, none dropped.
#[test]
fn json_logs_of_a_flooding_job_keep_the_runners_lines() {
    use std::io::Read as _;
    let sandbox = Sandbox::new();
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    // A slow reader: 4 KiB every 2 ms.
    let slowly = std::thread::spawn(move || {
        let (mut read, mut chunk) = (Vec::new(), [0; 4096]);
        loop {
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&read).into_owned(),
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let running = Running::start_with_stderr(
        sandbox.runner().args([
            "--log-format",
            "json",
            "--grace",
            "1s",
            TESTJOB,
            "flood",
            "stderr",
        ]),
        Stdio::null(),
        writer.into(),
    );
    wait_until("the job's checkpoint", || sandbox.checkpoint("testjob"));
    running.signal(SIGTERM);
    running.wait().assert_code(143);
    let stderr = slowly.join().expect("the reader");
    let runner: Vec<String> = objects(&stderr)
        .iter()
        .filter(|line| line.get("stream").is_none())
        .map(|line| line["message"].as_str().expect("a message").to_owned())
        .collect();
    for wanted in ["received SIGTERM", "job stopped by force"] {
        assert!(
            runner.iter().any(|line| line.contains(wanted)),
            "no `{wanted}` in {runner:#?}"
        );
    }
    // The job's last, unfinished line may find no room at its end; the runner's do.
    assert!(
        !runner
            .iter()
            .any(|line| line.contains("dropped") && !line.contains("of the job's")),
        "{runner:#?}"
    );
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
