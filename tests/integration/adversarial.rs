//! What an adversarial pass broke, kept as regression tests: each test names the promise
//! it backs (README.md, "Reliability", lists them).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runner::checkpoint::MAX_STATE_LEN;
use test_guests::{COMMAND, PYTHON_TESTJOB, SEQUENCE, TESTJOB};

use crate::util::{
    Finished, Running, SIGHUP, SIGINT, SIGTERM, Sandbox, bare_runner, run, takes_sigterm,
    wait_until,
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

/// A pipe whose buffer is full and whose reader never reads: a stuck log shipper. Writes
/// to it block.
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    let fd = writer.as_raw_fd();
    #[expect(unsafe_code, reason = "fcntl(2) has no safe wrapper in std")]
    // SAFETY: fcntl on a descriptor this function owns; no memory is passed.
    let set = |nonblocking: bool| unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags), 0, "fcntl");
    };
    set(true);
    let chunk = [b'.'; 4096];
    while writer.write(&chunk).is_ok() {}
    set(false);
    (reader, writer)
}

/// How long after the grace deadline the runner exits at most, whatever blocks: the
/// watchdog's 2 s, 1 s for the last lines (README, "Stopping"); and a margin for a
/// loaded machine.
const AFTER_DEADLINE: Duration = Duration::from_secs(3 + 3);

/// Starts `command` with its stderr a full pipe nobody reads and a termination log in
/// `sandbox`; stdout is read as usual.
/// The pipe's unread end is returned: keep it until the runner has exited.
fn start_with_stalled_stderr(
    sandbox: &Sandbox,
    command: &mut Command,
) -> (Running, std::io::PipeReader) {
    let (unread, stderr) = full_pipe();
    command.env(
        "RUNNER_TERMINATION_LOG",
        sandbox.path().join("summary.json"),
    );
    (
        Running::start_with_stderr(command, Stdio::null(), stderr.into()),
        unread,
    )
}

fn summary(sandbox: &Sandbox) -> String {
    fs::read_to_string(sandbox.path().join("summary.json")).expect("a summary")
}

/// Nothing the runner prints can block a stop: with stderr a full pipe nobody reads, a
/// cooperative job still sees the request and suspends, within its grace. (The line
/// "received SIGTERM" used to block the signal path, and the runner outlived SIGKILL.)
#[test]
fn a_stalled_stderr_does_not_block_a_cooperative_stop() {
    let sandbox = Sandbox::new();
    let (running, _unread) = start_with_stalled_stderr(
        &sandbox,
        sandbox.runner().args(["--grace", "3s", TESTJOB, "wait"]),
    );
    running.wait_for_line("ready");
    let signalled = Instant::now();
    running.signal(SIGTERM);
    running.wait_for_line("stop seen by pollable");
    let finished = running.wait();
    let took = signalled.elapsed();
    finished.assert_code(75);
    assert!(took < Duration::from_secs(3) + AFTER_DEADLINE, "{took:?}");
    assert!(summary(&sandbox).contains(r#""outcome":"suspended""#));
}

/// A stop that comes before the job starts (while it waits for the job's lock), with
/// stderr stalled.
#[test]
fn a_stalled_stderr_does_not_block_a_stop_before_the_job_starts() {
    let sandbox = Sandbox::new();
    let owner = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    owner.wait_for_line("ready");
    let (waiting, _unread) = start_with_stalled_stderr(
        &sandbox,
        sandbox
            .runner()
            .args(["--lock-timeout", "10m", TESTJOB, "wait"]),
    );
    wait_until("the runner's signal handlers", || {
        takes_sigterm(waiting.pid()).then_some(())
    });
    let signalled = Instant::now();
    waiting.signal(SIGTERM);
    let finished = waiting.wait();
    let took = signalled.elapsed();
    finished.assert_code(75);
    assert!(took < AFTER_DEADLINE, "{took:?}");
    owner.signal(SIGTERM);
    owner.wait().assert_code(75);
}

/// A job blocked writing to the stalled stderr is left behind after the deadline, as one
/// blocked on stdout is: the runner exits with the forced-stop code and its summary.
#[test]
fn a_job_blocked_on_a_stalled_stderr_is_stopped_at_the_deadline() {
    job_blocked_on_a_stalled_stderr("text");
}

/// The same with JSON logs, where the job's lines wait in the runner's queue for stderr.
#[test]
fn a_job_blocked_on_a_stalled_stderr_with_json_logs_is_stopped_at_the_deadline() {
    job_blocked_on_a_stalled_stderr("json");
}

fn job_blocked_on_a_stalled_stderr(log_format: &str) {
    let sandbox = Sandbox::new();
    let (unread, stderr) = std::io::pipe().expect("pipe");
    let mut command = sandbox.runner();
    command
        .arg("--termination-log")
        .arg(sandbox.path().join("summary.json"))
        .args(["--log-format", log_format])
        .args(["--grace", "1s", TESTJOB, "flood", "stderr"]);
    let running = Running::start_with_stderr(&mut command, Stdio::null(), stderr.into());
    wait_until("the job's checkpoint", || sandbox.checkpoint("testjob"));
    let signalled = Instant::now();
    running.signal(SIGTERM);
    let finished = running.wait();
    let took = signalled.elapsed();
    drop(unread);
    finished.assert_code(143);
    assert!(took < Duration::from_secs(1) + AFTER_DEADLINE, "{took:?}");
    let summary = summary(&sandbox);
    assert!(
        summary.contains(r#""outcome":"stopped-by-force","exit_code":143"#),
        "{summary}"
    );
}

/// An early error (a missing job file) with a stalled stderr exits at once, with its
/// summary.
#[test]
fn a_stalled_stderr_does_not_block_an_early_error() {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let (running, _unread) = start_with_stalled_stderr(
        &sandbox,
        sandbox.runner().arg(sandbox.path().join("missing.wasm")),
    );
    let finished = running.wait();
    finished.assert_code(2);
    assert!(
        started.elapsed() < AFTER_DEADLINE,
        "{:?}",
        started.elapsed()
    );
    assert!(summary(&sandbox).contains("missing.wasm"));
}

/// Every bad value gets a one-line error naming its argument or its cause, exit 2, and
/// changes nothing.
#[test]
fn bad_arguments_are_refused_with_a_line_that_names_them() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;

    let sandbox = Sandbox::new();
    let not_utf8 = OsStr::from_bytes(b"A=\xff");
    run(sandbox.runner().arg("--env").arg(not_utf8).arg(COMMAND))
        .assert_code(2)
        .assert_stderr("for '--env <NAME[=VALUE]>'")
        .assert_stderr("is not UTF-8");
    run(sandbox
        .runner()
        .env("RUNNER_GRACE", OsStr::from_bytes(b"\xff"))
        .arg(COMMAND))
    .assert_code(2)
    .assert_stderr("for '--grace <DURATION>'");

    let (a, b) = (sandbox.path().join("a"), sandbox.path().join("b"));
    fs::create_dir_all(&a).expect("a");
    fs::create_dir_all(&b).expect("b");
    let mapped = |host: &std::path::Path, guest: &str| format!("{}::{guest}", host.display());
    // A second --dir (its guest path spelt with a slash more), or --output, at `/data`.
    for (flag, guest, said) in [
        ("--dir", "/data/", "both give the job `/data/`"),
        ("--output", "/data", "and --output"),
    ] {
        run(sandbox
            .runner()
            .args(["--dir", &mapped(&a, "/data"), flag, &mapped(&b, guest)])
            .arg(COMMAND))
        .assert_code(2)
        .assert_stderr(said);
    }
    // The state directory, or a directory around it, or the compiled-job cache.
    for granted in [
        sandbox.state_dir(),
        sandbox.path().to_owned(),
        sandbox.cache_dir(),
    ] {
        run(sandbox.runner().arg("--dir").arg(&granted).arg(COMMAND))
            .assert_code(2)
            .assert_stderr("the job must not see the runner's own files");
    }
    assert!(!sandbox.state_dir().exists(), "a refused run made state");

    for bad in ["-x", "a\u{1b}[31mred"] {
        let finished = run(sandbox.runner().arg(format!("--job-id={bad}")).arg(COMMAND));
        finished.assert_code(2).assert_stderr("is not a job id");
        assert!(!finished.stderr.contains('\u{1b}'), "{}", finished.stderr);
    }
}

/// `--start-over` checks that it can take a new fencing number before it removes
/// anything: a `fence` it cannot replace refuses the run with the checkpoints intact.
#[test]
fn starting_over_with_an_unusable_fence_removes_nothing() {
    let sandbox = Sandbox::new();
    let job_dir = sandbox.job_dir("testjob");
    let saving = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    saving.wait_for_line("ready");
    saving.signal(SIGTERM);
    saving.wait().assert_code(75);
    let before = fs::read(job_dir.join("checkpoint")).expect("a checkpoint");
    fs::remove_file(job_dir.join("fence")).expect("remove fence");
    fs::create_dir(job_dir.join("fence")).expect("a directory in its place");
    run(sandbox.runner().args(["--start-over", TESTJOB, "show"]))
        .assert_code(2)
        .assert_stderr("fence");
    assert_eq!(fs::read(job_dir.join("checkpoint")).expect("kept"), before);
}

/// `--start-over` removes what the job left in `--output`, links included.
#[test]
fn starting_over_removes_links_the_job_left_in_its_output() {
    let sandbox = Sandbox::new();
    run(&mut sandbox.sequence(10)).assert_code(0);
    let link = sandbox.output_dir().join("link");
    symlink("/etc/hostname", &link).expect("symlink");
    run(sandbox
        .runner()
        .arg("--start-over")
        .arg("--output")
        .arg(sandbox.output_dir())
        .args([SEQUENCE, "10"]))
    .assert_code(0);
    assert!(fs::symlink_metadata(&link).is_err(), "the link survived");
    assert!(sandbox.check_sequence_output(10).is_exact(10));
}

/// SIGQUIT, a request to stop at once, stops the job with no grace and still leaves the
/// run's summary (it used to kill the runner with none).
#[test]
fn sigquit_stops_the_job_at_once_with_a_summary() {
    let sandbox = Sandbox::new();
    let summary_path = sandbox.path().join("summary.json");
    let running = Running::start(
        sandbox
            .runner()
            .env("RUNNER_TERMINATION_LOG", &summary_path)
            .args(["--grace", "10m", TESTJOB, "spin"]),
        Stdio::null(),
    );
    running.wait_for_line("ready");
    let signalled = Instant::now();
    running.signal(libc::SIGQUIT);
    let finished = running.wait();
    let took = signalled.elapsed();
    finished
        .assert_code(131)
        .assert_stderr("received SIGQUIT: stopping the job now, with no grace");
    assert!(took < AFTER_DEADLINE, "{took:?}");
    let summary = fs::read_to_string(&summary_path).expect("a summary");
    assert!(
        summary.contains(r#""outcome":"stopped-by-force","exit_code":131"#)
            && summary.contains("SIGQUIT"),
        "{summary}"
    );
}

/// A job file that cannot run leaves no state behind: one that is missing or is not a
/// component is refused before the job's state directory is made; one that fails to
/// compile or link (found while the run takes the job) has the directory removed again,
/// unless the job had state before.
#[test]
fn a_job_file_that_cannot_run_leaves_no_state() {
    let sandbox = Sandbox::new();
    let file = |name: &str, bytes: &[u8]| {
        let path = sandbox.path().join(name);
        fs::write(&path, bytes).expect("write");
        path
    };
    let sequence = fs::read(SEQUENCE).expect("read sequence");
    for (job, problem) in [
        (sandbox.path().join("missing.wasm"), "cannot read job"),
        (
            file("notes.wasm", b"not WebAssembly"),
            "is not a WebAssembly component",
        ),
        (
            file("truncated.wasm", &sequence[..sequence.len() / 2]),
            "is not a valid component",
        ),
        // A valid component that exports nothing.
        (file("empty.wasm", b"\0asm\x0d\0\x01\0"), "exports neither"),
    ] {
        run(sandbox.runner().arg(&job))
            .assert_code(2)
            .assert_stderr(problem);
        let stem = job.file_stem().expect("stem").to_string_lossy();
        assert!(!sandbox.job_dir(&stem).exists(), "{stem} left state");
    }

    // A job with checkpoints (suspended, not completed: a completed job is not run, nor
    // its file loaded) keeps them when a file that does not load runs as it.
    let saving = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    saving.wait_for_line("ready");
    saving.signal(SIGTERM);
    saving.wait().assert_code(75);
    let before = sandbox.checkpoint("testjob").expect("a checkpoint");
    run(sandbox
        .runner()
        .args(["--job-id", "testjob"])
        .arg(sandbox.path().join("truncated.wasm")))
    .assert_code(2)
    .assert_stderr("is not a valid component");
    assert_eq!(sandbox.checkpoint("testjob"), Some(before));
}

/// `s3://` state without credentials says so, rather than only reporting a failed request
/// to the instance metadata service (pointed here at a closed local port: the test sends
/// nothing off this machine).
#[test]
fn a_bucket_without_credentials_says_so() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let sandbox = Sandbox::new();
    let mut command = bare_runner();
    command
        .args(["--state-dir", "s3://bucket/jobs", COMMAND])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_METADATA_ENDPOINT", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("RUNNER_CACHE_DIR", sandbox.cache_dir());
    run(&mut command)
        .assert_code(2)
        .assert_stderr("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
}
