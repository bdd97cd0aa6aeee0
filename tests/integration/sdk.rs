//! The guest SDKs as job authors use them: the Python example gives the same answers as
//! its Rust twin, stops and resumes the same way, and both SDKs turn a job's errors into
//! messages with their causes.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;

use runner::checkpoint::Record;
use test_guests::{PYTHON_TESTJOB, PYTHON_WORDCOUNT, TESTJOB, WORDCOUNT};

use crate::resume::{big_input, wordcount_stopped_twice};
use crate::util::{Running, SIGTERM, Sandbox, run, sdk_state, state_field};

/// A few small files with text that a naive word splitter gets wrong: punctuation,
/// underscores, digits, CRLF, a last line without a newline, bytes that are not UTF-8,
/// letters of several scripts, some of which change when lower-cased, combining marks
/// and letter-like symbols (not word characters), and a symbolic link (not followed).
pub fn tricky_input(sandbox: &Sandbox) -> PathBuf {
    let input = sandbox.path().join("tricky");
    fs::create_dir_all(input.join("deeper/still")).expect("mkdir");
    fs::write(
        input.join("one.txt"),
        "Hello, world! HELLO again; hello_world 42 4.2\r\nthe end\n",
    )
    .expect("write");
    fs::write(
        input.join("deeper/two.txt"),
        "Straße STRASSE straße ΣΊΣΥΦΟΣ Σίσυφος\nКОТ кот Кот 猫 猫猫\nİstanbul ǅemal Ⅻ x²\n",
    )
    .expect("write");
    fs::write(
        input.join("deeper/still/three.bin"),
        b"caf\xe9 caf\xc3\xa9 \xff\xfe tail-without-newline",
    )
    .expect("write");
    fs::write(input.join("empty.txt"), "").expect("write");
    fs::write(input.join("marks.txt"), "किताब किताब Ⓐb ⓐB café\n").expect("write");
    std::os::unix::fs::symlink("one.txt", input.join("link.txt")).expect("symlink");
    input
}

pub fn wordcount_args<'a>(job: &'a str, dir: &'a str, top: &'a str) -> [&'a str; 5] {
    ["--dir", dir, job, "/input", top]
}

#[test]
fn python_wordcount_prints_what_the_rust_wordcount_prints() {
    let sandbox = Sandbox::new();
    let input = tricky_input(&sandbox);
    let dir = format!("{}::/input", input.display());
    let rust = run(sandbox
        .runner()
        .args(["--job-id", "rust"])
        .args(wordcount_args(WORDCOUNT, &dir, "100")));
    rust.assert_code(0);
    let python = run(sandbox
        .runner()
        .args(["--job-id", "python"])
        .args(wordcount_args(PYTHON_WORDCOUNT, &dir, "100")));
    python.assert_code(0);
    assert_eq!(python.stdout, rust.stdout);
    // Sanity: the answer is the one worked out by hand, not just the same mistake twice.
    assert!(
        rust.stdout
            .starts_with("39 words, 27 distinct, in 5 files\n"),
        "{}",
        rust.stdout
    );
    for line in [
        "       3 hello",
        "       3 кот",
        "       2 straße",
        "       2 σίσυφος",
        "       2 b",
        "       2 क",
    ] {
        assert!(
            rust.stdout.contains(&format!("{line}\n")),
            "{line}: {}",
            rust.stdout
        );
    }
}

#[test]
fn python_wordcount_stopped_and_resumed_prints_what_an_uninterrupted_run_prints() {
    let sandbox = Sandbox::new();
    // About 22 MB: seconds of counting for the Python job (it saves every second), so
    // that each stop leaves work for the next run.
    let input = big_input(&sandbox, 150_000);
    let output = wordcount_stopped_twice(
        &sandbox,
        PYTHON_WORDCOUNT,
        &input,
        "4500000 words, 500 distinct, in 3 files",
    );
    let dir = format!("{}::/input", input.display());
    let rust = run(sandbox
        .runner()
        .args(["--job-id", "rust"])
        .args(wordcount_args(WORDCOUNT, &dir, "5")));
    assert_eq!(output, rust.stdout);
}

#[test]
fn a_python_exception_fails_the_run_with_its_traceback() {
    let sandbox = Sandbox::new();
    let missing = run(sandbox.runner().arg(PYTHON_WORDCOUNT));
    missing.assert_code(1);
    missing.assert_stderr("Traceback (most recent call last):");
    missing.assert_stderr("ValueError: usage: wordcount.wasm DIR [TOP]");

    let empty = sandbox.path().join("empty");
    fs::create_dir_all(&empty).expect("mkdir");
    let dir = format!("{}::/input", empty.display());
    let bad_top = run(sandbox
        .runner()
        .args(["--job-id", "bad-top"])
        .args(wordcount_args(PYTHON_WORDCOUNT, &dir, "many")));
    bad_top.assert_code(1);
    bad_top.assert_stderr("ValueError: TOP `many` is not a whole number");
}

#[test]
fn a_rust_job_error_shows_its_chain_of_causes() {
    let sandbox = Sandbox::new();
    let finished = run(sandbox.runner().args([WORDCOUNT, "/nowhere"]));
    finished.assert_code(1);
    // The context the job added, then the I/O error under it.
    finished.assert_stderr("cannot list /nowhere (did you pass --dir HOST::/nowhere?): ");
    let bad_top = run(sandbox.runner().args([WORDCOUNT, "/nowhere", "many"]));
    bad_top.assert_code(1);
    bad_top.assert_stderr("TOP `many` is not a whole number: invalid digit found in string");
    let cause = finished
        .stderr
        .split("cannot list /nowhere (did you pass --dir HOST::/nowhere?): ")
        .nth(1)
        .unwrap_or_default();
    assert!(
        !cause.trim().is_empty(),
        "no cause after the context: {}",
        finished.stderr
    );
}

#[test]
fn a_saved_place_that_does_not_fit_the_input_is_a_clear_error() {
    let sandbox = Sandbox::new();
    // About 45 MB: seconds of counting for the Rust job, which saves every second.
    let input = big_input(&sandbox, 300_000);
    let dir = format!("{}::/input", input.display());
    let args = wordcount_args(WORDCOUNT, &dir, "5");
    let mut running = Running::start(sandbox.runner().args(args), Stdio::null());
    sandbox.wait_for_checkpoint_after(&mut running, "wordcount", 0);
    running.signal(SIGTERM);
    running.wait().assert_code(75);
    let saved = sandbox.checkpoint("wordcount").expect("checkpoint");
    let file = state_field(&saved.payload, "/batches/0/file");
    let offset = state_field(&saved.payload, "/batches/0/offset");
    assert!(offset > 0, "the stop came between two files: {offset}");
    // The files in the order the job walks them; cut the one it stopped in short.
    let files = [
        input.join("a.txt"),
        input.join("b.txt"),
        input.join("nested/c.txt"),
    ];
    fs::OpenOptions::new()
        .write(true)
        .open(&files[file as usize])
        .and_then(|handle| handle.set_len(offset / 2))
        .expect("truncate");

    let rerun = run(sandbox.runner().args(args));
    rerun.assert_code(1);
    rerun.assert_stderr(&format!(
        "cannot resume batch 0 at {{\"file\":{file},\"offset\":{offset}}}"
    ));
    rerun.assert_stderr("(did the input change?)");
}

#[test]
fn a_run_that_stops_before_reaching_a_batch_keeps_that_batch_s_place() {
    // Each batch sums 0..N: seconds of work, saved every 100 ms.
    stops_before_reaching_a_batch(TESTJOB, 500_000_000);
    stops_before_reaching_a_batch(PYTHON_TESTJOB, 5_000_000);
}

/// Stops `job` (a test job) inside its second batch, then again before it reaches
/// either batch, and checks that the second batch's place survives both.
fn stops_before_reaching_a_batch(job: &str, n: u64) {
    let sandbox = Sandbox::new();
    let count = n.to_string();
    let args = ["--job-id", "two", job, "two-batches", &count];
    let places = |record: &Record| -> Vec<serde_json::Value> {
        let saved: serde_json::Value = serde_json::from_slice(&record.payload).expect("JSON");
        saved["batches"].as_array().cloned().unwrap_or_default()
    };

    // Stopped in the second batch: the first one's end and the second one's place.
    let mut first = Running::start(sandbox.runner().args(args), Stdio::null());
    let mut last = 0;
    let inside_second = loop {
        let record = sandbox.wait_for_checkpoint_after(&mut first, "two", last);
        last = record.sequence;
        if places(&record).len() == 2 {
            break record;
        }
    };
    first.signal(SIGTERM);
    first.wait().assert_code(75);
    let stopped = sandbox.checkpoint("two").expect("checkpoint");
    let stopped_places = places(&stopped);
    assert_eq!(stopped_places.len(), 2, "{stopped_places:?}");
    assert_eq!(stopped_places[0], n, "{stopped_places:?}");
    assert!(stopped_places[1].as_u64() >= places(&inside_second)[1].as_u64());

    // Suspended before either batch runs: the save keeps the second batch's place,
    // which its state (the sum so far) goes with.
    let second = Running::start(
        sandbox
            .runner()
            .args(["--job-id", "two", job, "two-batches", &count, "wait"]),
        Stdio::null(),
    );
    second.wait_for_line("ready");
    second.signal(SIGTERM);
    second.wait().assert_code(75);
    let suspended = sandbox.checkpoint("two").expect("checkpoint");
    assert!(
        suspended.sequence > stopped.sequence,
        "{job}: suspending saved nothing: {suspended:?}"
    );
    assert_eq!(places(&suspended), stopped_places);

    let done = run(sandbox.runner().args(args));
    done.assert_code(0);
    let sum = n * (n - 1) / 2;
    assert_eq!(done.stdout, format!("ready\nsums [{sum}, {sum}]\n"));
}

#[test]
fn a_loop_that_swallows_the_stop_ends_the_run_suspended() {
    for job in [TESTJOB, PYTHON_TESTJOB] {
        let sandbox = Sandbox::new();
        let running = Running::start(
            sandbox.runner().args([job, "swallow", "100000000000"]),
            Stdio::null(),
        );
        running.wait_for_line("ready");
        running.signal(SIGTERM);
        let done = running.wait();
        done.assert_code(75);
        done.assert_stderr(
            "after a batch stopped on the runner's request: the run ends as suspended",
        );
    }
}

#[test]
fn python_sys_exit_exits_as_cpython_does() {
    let sandbox = Sandbox::new();
    for (arg, code) in [("0", 0), ("3", 3), ("256", 0), ("257", 1), ("-1", 255)] {
        // Each run anew: an exit of 0 completes the job.
        let done = run(sandbox
            .runner()
            .args(["--start-over", PYTHON_TESTJOB, "exit", arg]));
        done.assert_code(code);
    }
    let message =
        run(sandbox
            .runner()
            .args(["--start-over", PYTHON_TESTJOB, "exit", "out of paper"]));
    message.assert_code(1);
    message.assert_stderr("out of paper");
}

#[test]
fn python_state_that_would_not_load_back_the_same_is_not_saved() {
    let sandbox = Sandbox::new();
    for (state, error) in [
        ("{1: 2}", "the state would not load back the same from JSON"),
        (
            "{'x': (1, 2)}",
            "the state would not load back the same from JSON",
        ),
        (
            "{'x': float('nan')}",
            "the state is not JSON: Out of range float values",
        ),
        (
            "{'x': object()}",
            "the state is not JSON: Object of type object",
        ),
    ] {
        let bad = run(sandbox
            .runner()
            .args(["--job-id", "py", PYTHON_TESTJOB, "save", state]));
        bad.assert_code(1);
        bad.assert_stderr(&format!("runner_job.CheckpointError: {error}"));
        assert_eq!(sandbox.checkpoint("py"), None, "{state} was saved");
    }
    let good = run(sandbox.runner().args([
        "--job-id",
        "py",
        PYTHON_TESTJOB,
        "save",
        "{'counts': {'a': [1, 2.5]}}",
    ]));
    good.assert_code(0);
    let record = sandbox.checkpoint("py").expect("checkpoint");
    assert_eq!(
        String::from_utf8_lossy(&record.payload),
        r#"{"state":{"counts":{"a":[1,2.5]}},"batches":[],"job":"python:testjob"}"#
    );
}

#[test]
fn a_rust_state_that_would_not_load_back_is_not_saved() {
    let sandbox = Sandbox::new();
    let done = run(sandbox.runner().args([TESTJOB, "save-nan"]));
    done.assert_code(0);
    assert!(
        done.stdout.starts_with(
            "save: checkpoint state is not JSON that decodes back into its type: invalid \
             type: null, expected f64"
        ),
        "{}",
        done.stdout
    );
    let record = sandbox.checkpoint("testjob").expect("checkpoint");
    assert_eq!(
        sdk_state(&record.payload),
        r#"{"note":"before","runs":1}"#,
        "the state saved before is still the committed one"
    );
}

/// Two different jobs given one job id (here a Rust and a Python job, both `testjob`)
/// do not take each other's state: the SDK refuses a checkpoint another job saved.
#[test]
fn a_checkpoint_saved_by_another_job_is_refused() {
    let sandbox = Sandbox::new();
    let rust = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    rust.wait_for_line("ready");
    rust.signal(SIGTERM);
    rust.wait().assert_code(75);
    let python = run(sandbox
        .runner()
        .args(["--job-id", "testjob", PYTHON_TESTJOB, "save", "{}"]));
    python.assert_code(1).assert_stderr(
        "the checkpoint was saved by another job (`rust:testjob`), not by this one \
         (`python:testjob`): two jobs share one job id",
    );

    let python = Running::start(
        sandbox
            .runner()
            .args([PYTHON_TESTJOB, "two-batches", "100", "wait"]),
        Stdio::null(),
    );
    python.wait_for_line("ready");
    python.signal(SIGTERM);
    python.wait().assert_code(75);
    let rust = run(sandbox
        .runner()
        .args(["--job-id", "python-testjob", TESTJOB, "show"]));
    rust.assert_code(1).assert_stderr(
        "the checkpoint was saved by another job (`python:testjob`), not by this one \
         (`rust:testjob`)",
    );
    // The checkpoint that was refused is still there, as it was.
    assert!(sandbox.checkpoint("python-testjob").is_some());
}

/// `wait_for` returns the index of a ready pollable of the job's own, or `None` the
/// moment the stop request comes (Rust and Python); the Python job, stateless, suspends
/// without saving and the runner says so.
#[test]
fn wait_for_wakes_on_a_ready_pollable_or_the_stop_request() {
    for job in [TESTJOB, PYTHON_TESTJOB] {
        let sandbox = Sandbox::new();
        let running = Running::start(sandbox.runner().args([job, "wait-for"]), Stdio::null());
        running.wait_for_line("woken by pollable 0");
        running.wait_for_line("ready");
        running.signal(SIGTERM);
        running.wait_for_line("woken by the stop request");
        let stopped = running.wait();
        stopped.assert_code(75);
        if job == PYTHON_TESTJOB {
            stopped.assert_stderr("job suspended on request; it saved no state");
            assert_eq!(sandbox.checkpoint("python-testjob"), None);
        }
    }
}

/// `ctx.output` (Rust, Python) appends to a file of the output directory, making its
/// parent directories; a path that leaves the directory, or a job run without one, is
/// an error that says so.
#[test]
fn ctx_output_writes_inside_the_output_directory_only() {
    for job in [TESTJOB, PYTHON_TESTJOB] {
        let sandbox = Sandbox::new();
        let output = |args: &[&str]| {
            let mut command = sandbox.runner();
            command
                .arg("--start-over")
                .arg("--output")
                .arg(sandbox.output_dir())
                .args([job, "output"])
                .args(args);
            run(&mut command)
        };
        output(&["results/first.txt", "one"]).assert_code(0);
        assert_eq!(
            fs::read_to_string(sandbox.output_dir().join("results/first.txt")).expect("read"),
            "one\n"
        );
        for bad in ["../escape.txt", "/abs.txt", "a/../../b"] {
            output(&[bad, "x"])
                .assert_code(1)
                .assert_stderr("is not a path inside the output directory");
        }
        run(sandbox
            .runner()
            .args(["--job-id", "no-output", job, "output", "x.txt", "x"]))
        .assert_code(1)
        .assert_stderr("the job has no output directory: run it with `runner --output DIR`");
    }
}

/// A stateless job that wrote output saves when it suspends (its output is recorded, and
/// kept by the next run), rather than saving nothing.
#[test]
fn a_stateless_job_with_output_saves_when_it_suspends() {
    let sandbox = Sandbox::new();
    let running = Running::start(
        sandbox
            .runner()
            .arg("--output")
            .arg(sandbox.output_dir())
            .args([PYTHON_TESTJOB, "output-wait"]),
        Stdio::null(),
    );
    running.wait_for_line("ready");
    running.signal(SIGTERM);
    let stopped = running.wait();
    stopped.assert_code(75);
    assert!(
        !stopped.stderr.contains("saved no state"),
        "{}",
        stopped.stderr
    );
    let record = sandbox.checkpoint("python-testjob").expect("a checkpoint");
    assert_eq!(record.outputs.len(), 1, "{record:?}");
    assert_eq!(
        record.outputs[0].len,
        "written before the stop\n".len() as u64
    );
}
