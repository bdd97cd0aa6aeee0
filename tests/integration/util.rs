//! Running the real `runner` binary and waiting for what it does.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use runner::checkpoint::Record;

/// Long enough for anything to happen on a loaded 2-core machine; tests assert behaviour,
/// not speed.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub const SIGHUP: i32 = libc::SIGHUP;
pub const SIGINT: i32 = libc::SIGINT;
pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGTERM: i32 = libc::SIGTERM;

/// A state directory for one test, removed when dropped.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A `runner` command with this sandbox's state directory and nothing inherited
    /// from the environment that could change its behaviour.
    pub fn runner(&self) -> Command {
        let mut command = bare_runner();
        command.arg("--state-dir").arg(self.state_dir());
        command.env("RUNNER_CACHE_DIR", self.cache_dir());
        command
    }

    /// The compiled-job cache of this test's runs.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The transactional output directory for one test.
    pub fn output_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The directory of `job_id` in the state directory.
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.state_dir().join(job_id)
    }

    /// The newest committed checkpoint of `job_id`, as the runner would load it: the
    /// usable generation with the highest sequence number. A damaged file fails the test.
    pub fn checkpoint(&self, job_id: &str) -> Option<Record> {
        ["checkpoint", "checkpoint.prev"]
            .into_iter()
            .filter_map(|name| {
                let path = self.job_dir(job_id).join(name);
                let bytes = std::fs::read(&path).ok()?;
                Some(
                    Record::decode(&bytes)
                        .unwrap_or_else(|error| panic!("{}: {error}", path.display())),
                )
            })
            .max_by_key(|record| record.sequence)
    }

    /// A `runner` command for `sequence.wasm N` with this sandbox's output directory.
    pub fn sequence(&self, lines: u64) -> Command {
        let mut command = self.runner();
        command
            .arg("--output")
            .arg(self.output_dir())
            .arg(test_guests::SEQUENCE)
            .arg(lines.to_string());
        command
    }

    /// Checks that the `sequence` job's newest checkpoint agrees with its output: the
    /// lines its state says were written are exactly the bytes the record commits of
    /// `out.txt`, and the file holds at least those. Returns the lines committed.
    pub fn assert_sequence_consistent(&self) -> u64 {
        let Some(record) = self.checkpoint("sequence") else {
            return 0;
        };
        // The batch's place is the next line to write.
        let written = state_field(&record.payload, "/batches/0") - 1;
        let expected_len: u64 = (1..=written).map(|n| n.to_string().len() as u64 + 1).sum();
        let recorded = record
            .outputs
            .iter()
            .find(|output| output.path == "out.txt")
            .map_or(0, |output| output.len);
        assert_eq!(
            recorded, expected_len,
            "checkpoint {} says {written} lines were written but records {recorded} bytes of \
             out.txt",
            record.sequence
        );
        let on_disk = std::fs::metadata(self.output_dir().join("out.txt")).map_or(0, |m| m.len());
        assert!(
            on_disk >= recorded,
            "out.txt is {on_disk} bytes, shorter than the {recorded} committed"
        );
        written
    }

    /// Checks `out.txt` line by line against 1..=lines.
    pub fn check_sequence_output(&self, lines: u64) -> SequenceCheck {
        let text = std::fs::read_to_string(self.output_dir().join("out.txt")).unwrap_or_default();
        SequenceCheck::of(&text, lines)
    }

    /// Waits until `job_id`, run by `running`, has committed a checkpoint with a
    /// sequence above `after`.
    pub fn wait_for_checkpoint_after(
        &self,
        running: &mut Running,
        job_id: &str,
        after: u64,
    ) -> Record {
        wait_until("a new checkpoint", || {
            if let Some(status) = running.child.try_wait().expect("wait for runner") {
                panic!("the runner exited ({status}) before committing a new checkpoint");
            }
            self.checkpoint(job_id)
                .filter(|record| record.sequence > after)
        })
    }
}

/// A `runner` command with nothing inherited from the environment that could change
/// its behaviour.
pub fn bare_runner() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runner"));
    command
        .env_remove("RUNNER_GRACE")
        .env_remove("RUNNER_STATE_DIR")
        .env_remove("RUNNER_CACHE_DIR")
        .env_remove("RUNNER_LOG_FORMAT")
        .env_remove("RUNNER_METRICS_ADDR")
        .env_remove("ARGO_PROGRESS_FILE")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("RUNNER_LEASE")
        .env_remove("RUNNER_LOCK_TIMEOUT")
        // Not the default /dev/termination-log, should the tests run in a pod.
        .env("RUNNER_TERMINATION_LOG", "/dev/null");
    command
}

/// Polls `probe` until it returns something, for at most [`PATIENCE`].
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// How a finished run ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("runner died of a signal: {self:?}"))
    }

    /// Asserts that stdout contains `needle`, showing stdout when it does not.
    pub fn assert_stdout(&self, needle: &str) -> &Self {
        assert_contains("stdout", &self.stdout, needle);
        self
    }

    /// Asserts that stderr contains `needle`, showing stderr when it does not.
    pub fn assert_stderr(&self, needle: &str) -> &Self {
        assert_contains("stderr", &self.stderr, needle);
        self
    }

    /// Asserts the exit code, showing the output when it is not the expected one.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            expected,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

fn assert_contains(stream: &str, text: &str, needle: &str) {
    assert!(text.contains(needle), "no `{needle}` on {stream}:\n{text}");
}

/// Runs a command to completion, with stdin closed.
pub fn run(command: &mut Command) -> Finished {
    Running::start(command, Stdio::null()).wait()
}

/// A runner process whose stdout is read line by line as it comes.
pub struct Running {
    pub child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
}

impl Running {
    pub fn start(command: &mut Command, stdin: Stdio) -> Self {
        Self::start_with_stderr(command, stdin, Stdio::piped())
    }

    /// [`Running::start`] with stderr given; only a piped one is read.
    pub fn start_with_stderr(command: &mut Command, stdin: Stdio, stderr: Stdio) -> Self {
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start runner");
        let (sender, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let pipe = child.stdout.take().expect("stdout piped");
        let collected = Arc::clone(&stdout);
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                collected
                    .lock()
                    .expect("stdout lock")
                    .push_str(&format!("{line}\n"));
                let _ = sender.send(line);
            }
        });
        let stderr_reader = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        Running {
            child,
            lines,
            stdout,
            stdout_reader: Some(stdout_reader),
            stderr_reader,
        }
    }

    /// Waits for a stdout line that contains `needle`, and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with `{needle}` on stdout in time")
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "stdout closed before a line with `{needle}`; it had:\n{}",
                    self.stdout.lock().expect("stdout lock")
                ),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// For a runner started under `strace` or `unshare`: the pid of the runner, the
    /// wrapper's only child. Signals go to it (strace, signalled, would detach and leave
    /// the runner running).
    pub fn child_pid(&self) -> i32 {
        let children = format!("/proc/{0}/task/{0}/children", self.pid());
        wait_until("the wrapped runner process", || {
            std::fs::read_to_string(&children)
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    /// Waits for the process to exit (at most [`PATIENCE`]) and collects its output.
    pub fn wait(mut self) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for runner") {
                break status;
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("runner did not exit within {PATIENCE:?}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.stdout_reader.take().map(JoinHandle::join);
        let stderr = self
            .stderr_reader
            .take()
            .map(|reader| reader.join().expect("stderr reader"))
            .unwrap_or_default();
        let stdout = self.stdout.lock().expect("stdout lock").clone();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave a runner behind.
        let _ = self.child.kill();
    }
}

/// Sends a signal to a process that may just have exited (its parent has not reaped it
/// or, under strace, it died of the injected fault): that is not an error.
pub fn signal_if_alive(pid: i32, signal: i32) {
    #[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid, signal) };
    let error = std::io::Error::last_os_error();
    assert!(
        result == 0 || error.raw_os_error() == Some(libc::ESRCH),
        "kill({pid}, {signal}) failed: {error}"
    );
}

pub fn send_signal(pid: i32, signal: i32) {
    #[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal}) failed");
}

/// A per-record check of `sequence`'s output against `1..=N`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SequenceCheck {
    /// Lines read.
    pub records: u64,
    /// Numbers of 1..=N that are missing.
    pub lost: u64,
    /// Lines that repeat a number already seen.
    pub duplicated: u64,
    /// Lines that are not the next number (including duplicates and garbage).
    pub out_of_order: u64,
}

impl SequenceCheck {
    pub fn of(text: &str, lines: u64) -> Self {
        let mut check = SequenceCheck::default();
        let mut seen = std::collections::HashSet::new();
        let mut expected = 1;
        for line in text.lines() {
            check.records += 1;
            let number: Option<u64> = line.parse().ok();
            if number != Some(expected) {
                check.out_of_order += 1;
            }
            if let Some(number) = number {
                if !seen.insert(number) {
                    check.duplicated += 1;
                }
                expected = number + 1;
            }
        }
        check.lost = (1..=lines).filter(|n| !seen.contains(n)).count() as u64;
        check
    }

    pub fn is_exact(&self, lines: u64) -> bool {
        *self
            == SequenceCheck {
                records: lines,
                ..SequenceCheck::default()
            }
    }
}

/// Whether the process blocks or catches SIGTERM (or is gone): from `/proc/PID/status`.
pub fn takes_sigterm(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1 << (SIGTERM - 1);
    (mask("SigBlk:") | mask("SigCgt:")) & bit != 0
}

/// A whole number in the JSON the SDK saves, `{"state": ..., "batches": [...]}`, at
/// the JSON pointer `pointer` (such as `/state/count` or `/batches/0`).
/// The job's own state in a payload the Rust SDK saved (`{"state": ..., "batches": ...}`),
/// as compact JSON.
pub fn sdk_state(payload: &[u8]) -> String {
    let saved: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|error| panic!("the state is not JSON ({error}): {payload:?}"));
    saved
        .get("state")
        .unwrap_or_else(|| panic!("no `state` in {saved}"))
        .to_string()
}

pub fn state_field(payload: &[u8], pointer: &str) -> u64 {
    let saved: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|error| panic!("the state is not JSON ({error}): {payload:?}"));
    saved
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no whole number at {pointer} in {saved}"))
}

/// The number of primes below `limit`, by a sieve: an independent check of the job.
pub fn primes_below(limit: usize) -> usize {
    let mut composite = vec![false; limit];
    let mut count = 0;
    for n in 2..limit {
        if !composite[n] {
            count += 1;
            for multiple in (n.saturating_mul(n)..limit).step_by(n) {
                composite[multiple] = true;
            }
        }
    }
    count
}

/// Runs `job MODE` with `--grace 1s` (stdin `stdin`), and once it prints `ready` sends
/// it `signal`: it must exit `code` after its grace, no sooner.
pub fn assert_forced_after_grace(job: &str, mode: &str, signal: i32, code: i32, stdin: Stdio) {
    let sandbox = Sandbox::new();
    let running = Running::start(sandbox.runner().args(["--grace", "1s", job, mode]), stdin);
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

/// Runs `job linger sleep|spin` (it sees the request, prints `seen`, then sleeps or
/// computes on) with a grace of 10 minutes, asks it to stop with `first`, and checks that
/// a SIGINT then stops it by force at once (130), saying so.
pub fn assert_second_signal_forces_at_once(job: &str, first: i32, seen: &str) {
    for busy in ["sleep", "spin"] {
        let sandbox = Sandbox::new();
        let running = Running::start(
            sandbox
                .runner()
                .args(["--grace", "10m", job, "linger", busy]),
            Stdio::null(),
        );
        running.wait_for_line("ready");
        running.signal(first);
        running.wait_for_line(seen);
        let second = Instant::now();
        running.signal(SIGINT);
        let done = running.wait();
        done.assert_code(130);
        assert!(
            second.elapsed() < Duration::from_secs(60),
            "{busy}: {:?}",
            second.elapsed()
        );
        assert!(
            done.stderr
                .contains("received SIGINT while stopping: stopping the job by force"),
            "{busy}: {}",
            done.stderr
        );
        assert!(
            !done.stderr.contains("did not stop within"),
            "{}",
            done.stderr
        );
        // The job never saved: nothing stands for the next run to resume from.
        assert!(
            done.stderr.contains(
                "job stopped by force after SIGINT; it saved no checkpoint, so its next \
                 run starts from the beginning (exit 130)"
            ),
            "{}",
            done.stderr
        );
    }
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool tests/prerequisites.sh installs in the workspace's .venv.
pub fn venv(tool: &str) -> PathBuf {
    let path = workspace().join(".venv/bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run `sh tests/prerequisites.sh`",
        path.display()
    );
    path
}
