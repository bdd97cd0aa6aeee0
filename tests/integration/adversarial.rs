//! What an adversarial pass broke, kept as regression tests: each test names the promise
//! it backs (README.md, "Reliability", lists them).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runner::checkpoint::MAX_STATE_LEN;
use test_guests::{COMMAND, PYTHON_TESTJOB, TESTJOB};

use crate::util::{
    Finished, Running, SIGHUP, SIGINT, SIGTERM, Sandbox, bare_runner, run, wait_until,
};

/// The process's peak resident set size, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
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

/// The files of a job's directory the runner opens.
const JOB_FILES: [&str; 4] = ["lock", "fence", "checkpoint", "checkpoint.prev"];

/// A run of the plain command as job `j` in `sandbox`.
fn run_job_j(sandbox: &Sandbox) -> Finished {
    run(sandbox.runner().args(["--job-id", "j", COMMAND]))
}

/// The state directory is the runner's alone: a symbolic link there, in place of any
/// file it opens or of the job's directory, is refused (exit 2, naming it) and never
/// followed. (A symlinked `lock` used to be truncated and written through.)
#[test]
fn a_symbolic_link_in_the_state_directory_is_refused_not_followed() {
    for name in JOB_FILES {
        let sandbox = Sandbox::new();
        let victim = sandbox.path().join("victim");
        fs::write(&victim, "1\n2\n3\n").expect("write the victim");
        let job_dir = sandbox.job_dir("j");
        fs::create_dir_all(&job_dir).expect("job dir");
        symlink(&victim, job_dir.join(name)).expect("symlink");
        let finished = run_job_j(&sandbox);
        finished
            .assert_code(2)
            .assert_stderr(&format!("{}`", job_dir.join(name).display()))
            .assert_stderr("it is a symbolic link, which the runner never follows");
        assert_eq!(
            fs::read_to_string(&victim).expect("read the victim"),
            "1\n2\n3\n",
            "{name}: the link's target changed"
        );
    }

    let sandbox = Sandbox::new();
    let elsewhere = sandbox.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).expect("elsewhere");
    fs::create_dir_all(sandbox.state_dir()).expect("state dir");
    symlink(&elsewhere, sandbox.job_dir("j")).expect("symlink");
    run_job_j(&sandbox)
        .assert_code(2)
        .assert_stderr("it is a symbolic link, not a directory");
    assert_eq!(fs::read_dir(&elsewhere).expect("list").count(), 0);
}

/// A FIFO (or any file but a regular one) in place of a job's file is refused at once:
/// neither a run nor `runner state show` blocks opening it.
#[test]
fn a_fifo_in_the_state_directory_is_refused_without_blocking() {
    for name in JOB_FILES {
        let sandbox = Sandbox::new();
        let job_dir = sandbox.job_dir("j");
        fs::create_dir_all(&job_dir).expect("job dir");
        let fifo = job_dir.join(name);
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        run_job_j(&sandbox)
            .assert_code(2)
            .assert_stderr(&format!("{}`", fifo.display()))
            .assert_stderr("it is a FIFO, not a regular file");
        if name != "lock" {
            run(bare_runner()
                .args(["state", "show", "j", "--state-dir"])
                .arg(sandbox.state_dir()))
            .assert_code(0)
            .assert_stdout("it is a FIFO, not a regular file");
        }
    }
}

/// CPU time `pid` has used, in clock ticks (user and system).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    fields.get(11..13).map_or(0, |times| {
        times.iter().filter_map(|t| t.parse::<u64>().ok()).sum()
    })
}

/// `runner compile` stops on the first stop signal, in the middle of compiling (the
/// Python job takes seconds), with the forced-stop code and nothing written. (It used to
/// compile to the end through SIGINT and SIGTERM.)
#[test]
fn runner_compile_stops_on_a_signal_and_writes_nothing() {
    for (signal, code) in [(SIGTERM, 143), (SIGINT, 130), (SIGHUP, 129)] {
        let sandbox = Sandbox::new();
        let output = sandbox.path().join("job.cwasm");
        let mut compile = bare_runner();
        compile.args(["compile", PYTHON_TESTJOB, "-o"]).arg(&output);
        let running = Running::start(&mut compile, Stdio::null());
        // Compiling: it has used a tenth of a second of CPU.
        wait_until("the compile to be under way", || {
            (cpu_ticks(running.pid()) >= 10).then_some(())
        });
        let signalled = Instant::now();
        running.signal(signal);
        let finished = running.wait();
        let took = signalled.elapsed();
        finished
            .assert_code(code)
            .assert_stderr("runner compile stopped, and wrote nothing");
        assert!(
            took < Duration::from_secs(5),
            "runner compile took {took:?} to stop"
        );
        let left: Vec<_> = fs::read_dir(sandbox.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert!(
            !left
                .iter()
                .any(|name| name.to_string_lossy().contains("job.cwasm")),
            "left behind: {left:?}"
        );
    }
}

/// `runner state show` stops on a signal, even in a request to an object store that
/// never answers.
#[test]
fn runner_state_stops_on_a_signal() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    for action in ["show", "reset"] {
        let mut state = bare_runner();
        state
            .args(["state", action, "job", "--state-dir", "s3://bucket/jobs"])
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "key")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_REGION", "us-east-1");
        let running = Running::start(&mut state, Stdio::null());
        let (_connection, _) = listener.accept().expect("the runner connects");
        let signalled = Instant::now();
        running.signal(SIGTERM);
        let finished = running.wait();
        finished
            .assert_code(143)
            .assert_stderr("received SIGTERM: runner state stopped");
        assert!(signalled.elapsed() < Duration::from_secs(5), "{action}");
    }
}
