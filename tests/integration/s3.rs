//! Checkpoints in an S3-compatible bucket: the real runner against a real server,
//! s3s-fs (which honours conditional writes and keeps each object as a file in a
//! directory), started by each test; tests/prerequisites.sh installs it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner::checkpoint::Record;
use serde_json::Value;
use test_guests::{PRIMES, TESTJOB};

use crate::util::{
    Running, SIGTERM, Sandbox, bare_runner, primes_below, run, sdk_state, wait_until,
};

const BUCKET: &str = "checkpoints";
const KEY: &str = "runner-test";
const SECRET: &str = "runner-test-secret";

/// Points `command` at the bucket of the S3 endpoint on loopback port `port`, under
/// `prefix`.
fn use_endpoint(command: &mut Command, port: u16, prefix: &str) {
    command
        .arg("--state-dir")
        .arg(format!("s3://{BUCKET}/{prefix}"))
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN");
}

/// A free port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

/// An HTTP server on loopback that answers every request with one status: an S3
/// endpoint having a bad day (503, 429) or refusing (403). Stopped when dropped.
struct FixedAnswer {
    child: Child,
    port: u16,
}

impl FixedAnswer {
    fn start(status: u16) -> Self {
        const SERVER: &str = "\
import http.server, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get('Content-Length') or 0))
        self.send_response(int(sys.argv[2]))
        self.send_header('Content-Length', '0')
        self.end_headers()
    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Answer).serve_forever()
";
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", SERVER, &port.to_string(), &status.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start python3");
        wait_until("the server to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        FixedAnswer { child, port }
    }
}

impl Drop for FixedAnswer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running s3s-fs with one bucket, stopped when dropped.
pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
}

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("create the server's directory");
        // A bucket is a directory to s3s-fs.
        std::fs::create_dir(root.path().join(BUCKET)).expect("create the bucket");
        let port = free_port();
        let mut server = S3Server {
            child: None,
            root,
            port,
        };
        server.restart();
        server
    }

    /// Starts the server (again) on the same port and directory.
    pub fn restart(&mut self) {
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs (tests/prerequisites.sh installs it)");
        self.child = Some(child);
        wait_until("s3s-fs to listen", || {
            TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
    }

    /// Kills the server, as a crash or a lost network would stop it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A `runner` command that keeps its state in this server's bucket under `prefix`.
    pub fn runner(&self, sandbox: &Sandbox, prefix: &str) -> Command {
        let mut command = self.bare(prefix);
        command.env("RUNNER_CACHE_DIR", sandbox.cache_dir());
        command
    }

    /// `runner state ACTION JOB_ID` on this server's bucket under `prefix`.
    pub fn state(&self, action: &str, prefix: &str, job_id: &str) -> Command {
        let mut command = bare_runner();
        command.args(["state", action, job_id]);
        self.configure(&mut command, prefix);
        command
    }

    fn bare(&self, prefix: &str) -> Command {
        let mut command = bare_runner();
        self.configure(&mut command, prefix);
        command
    }

    fn configure(&self, command: &mut Command, prefix: &str) {
        use_endpoint(command, self.port, prefix);
    }

    /// The file in which the server keeps `prefix/job_id/name`.
    pub fn object(&self, prefix: &str, job_id: &str, name: &str) -> PathBuf {
        self.root
            .path()
            .join(BUCKET)
            .join(prefix)
            .join(job_id)
            .join(name)
    }

    /// The job's head, as JSON.
    pub fn head(&self, prefix: &str, job_id: &str) -> Value {
        let path = self.object(prefix, job_id, "head");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("`{text}`: {error}"))
    }

    /// The file of the record the head names as `which` ("latest" or "previous").
    pub fn record_file(&self, prefix: &str, job_id: &str, which: &str) -> PathBuf {
        let head = self.head(prefix, job_id);
        let name = head[which]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no {which} record in {head}"));
        self.object(prefix, job_id, &format!("records/{name}"))
    }

    /// The record the head names as `which`.
    pub fn record(&self, prefix: &str, job_id: &str, which: &str) -> Record {
        let path = self.record_file(prefix, job_id, which);
        let bytes = std::fs::read(&path).expect("read the record");
        Record::decode(&bytes).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// The names of the job's record objects.
    pub fn records(&self, prefix: &str, job_id: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.object(prefix, job_id, "records"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// primes with a limit that takes it seconds, and the answer it must print.
const LIMIT: usize = 20_000_000;

fn primes_answer() -> String {
    format!("primes below {LIMIT}: {}", primes_below(LIMIT))
}

/// A primes run asked to stop after `timeout`: it saves and suspends.
fn suspended_primes(server: &S3Server, sandbox: &Sandbox, prefix: &str, timeout: &str) {
    suspended_primes_with(server, sandbox, prefix, &["--timeout", timeout]);
}

/// A primes run with `args`, which it must end by suspending (300ms unless `args` give
/// a --timeout).
fn suspended_primes_with(server: &S3Server, sandbox: &Sandbox, prefix: &str, args: &[&str]) {
    let mut command = server.runner(sandbox, prefix);
    if !args.contains(&"--timeout") {
        command.args(["--timeout", "300ms"]);
    }
    let finished = run(command.args(args).args([PRIMES, &LIMIT.to_string()]));
    finished.assert_code(75);
}

#[test]
fn a_job_saves_to_the_bucket_and_resumes_from_it() {
    let server = S3Server::start();
    let sandbox = Sandbox::new();
    suspended_primes(&server, &sandbox, "resume", "300ms");
    let first = server.record("resume", "primes", "latest");
    let resumed = run(server.runner(&sandbox, "resume").args([
        "--timeout",
        "300ms",
        PRIMES,
        &LIMIT.to_string(),
    ]));
    resumed.assert_code(75).assert_stderr(&format!(
        "resuming job `primes` from checkpoint {} in `s3://{BUCKET}/resume/primes`",
        first.sequence
    ));
    let second = server.record("resume", "primes", "latest");
    assert!(second.sequence > first.sequence, "{second:?}");
    assert_eq!(
        server.record("resume", "primes", "previous").sequence,
        first.sequence
    );
    // Each run took the job with a fencing number one above the last, and released it.
    let head = server.head("resume", "primes");
    assert_eq!(head["fence"], 2, "{head}");
    assert_eq!(head["owner"], Value::Null, "{head}");
    assert_eq!(second.fence, 2);

    let done = run(server
        .runner(&sandbox, "resume")
        .args([PRIMES, &LIMIT.to_string()]));
    done.assert_code(0)
        .assert_stdout(&primes_answer())
        .assert_stderr("resuming job `primes`");
    // Generations that dropped out are gone: only the two the head names are left.
    let head = server.head("resume", "primes");
    let named: Vec<String> = ["latest", "previous"]
        .iter()
        .map(|which| head[which]["name"].as_str().expect("a name").to_owned())
        .collect();
    // The removals run beside the job, and the run's end waits for them a while.
    wait_until("the replaced records to be removed", || {
        let mut left = server.records("resume", "primes");
        left.retain(|name| !named.contains(name));
        left.is_empty().then_some(())
    });

    // Completed is a state: a rerun does not run the job.
    assert!(server.record("resume", "primes", "latest").completed);
    let rerun = run(server
        .runner(&sandbox, "resume")
        .args([PRIMES, &LIMIT.to_string()]));
    rerun
        .assert_code(0)
        .assert_stderr("job `primes` completed at ")
        .assert_stderr("not running it again; --start-over runs it anew");
    assert!(rerun.stdout.is_empty(), "the job ran: {}", rerun.stdout);

    let shown = run(&mut server.state("show", "resume", "primes"));
    shown
        .assert_code(0)
        .assert_stdout(&format!("job `primes` in `s3://{BUCKET}/resume/primes`"))
        .assert_stdout("completed: yes")
        .assert_stdout("newest fencing number: 4")
        .assert_stdout("owner: none (the last run released the job)");
    let reset = run(&mut server.state("reset", "resume", "primes"));
    reset.assert_code(0).assert_stdout("fencing number 4 kept");
    assert!(server.records("resume", "primes").is_empty());
    // From scratch, and with a fencing number above every earlier one.
    suspended_primes(&server, &sandbox, "resume", "300ms");
    assert_eq!(server.record("resume", "primes", "latest").fence, 5);
}

#[test]
fn a_damaged_latest_record_falls_back_to_the_previous_one() {
    let server = S3Server::start();
    let sandbox = Sandbox::new();
    suspended_primes(&server, &sandbox, "damaged", "300ms");
    suspended_primes(&server, &sandbox, "damaged", "300ms");
    let previous = server.record("damaged", "primes", "previous");
    // Cut short, as a torn upload or a damaged disk on the server would leave it.
    let latest = server.record_file("damaged", "primes", "latest");
    let bytes = std::fs::read(&latest).expect("read the record");
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).expect("damage the record");

    let done = run(server
        .runner(&sandbox, "damaged")
        .args([PRIMES, &LIMIT.to_string()]));
    done.assert_code(0)
        .assert_stdout(&primes_answer())
        .assert_stderr("is unusable")
        .assert_stderr("falling back to the previous generation")
        .assert_stderr(&format!(
            "resuming job `primes` from checkpoint {}",
            previous.sequence
        ));
}

#[test]
fn a_damaged_head_is_an_error_until_the_run_starts_over() {
    let server = S3Server::start();
    let sandbox = Sandbox::new();
    suspended_primes(&server, &sandbox, "head", "300ms");
    std::fs::write(
        server.object("head", "primes", "head"),
        b"{\"format\": 1, \"fen",
    )
    .expect("damage the head");
    let refused = run(server
        .runner(&sandbox, "head")
        .args([PRIMES, &LIMIT.to_string()]));
    refused
        .assert_code(2)
        .assert_stderr(&format!("`s3://{BUCKET}/head/primes/head` is unusable"))
        .assert_stderr("--start-over");
    assert!(refused.stdout.is_empty());

    let fresh =
        run(server
            .runner(&sandbox, "head")
            .args(["--start-over", PRIMES, &LIMIT.to_string()]));
    fresh.assert_code(0).assert_stdout(&primes_answer());
    // The numbers went on from the records that were there.
    assert_eq!(server.head("head", "primes")["fence"], 2);

    // A head removed by hand leaves records that nothing names: not dropped silently.
    suspended_primes(&server, &sandbox, "nohead", "300ms");
    std::fs::remove_file(server.object("nohead", "primes", "head")).expect("remove the head");
    let refused = run(server
        .runner(&sandbox, "nohead")
        .args([PRIMES, &LIMIT.to_string()]));
    refused
        .assert_code(2)
        .assert_stderr("it is missing, but the job has records");
    suspended_primes_with(&server, &sandbox, "nohead", &["--start-over"]);
    // Above the records' numbers.
    assert_eq!(server.head("nohead", "primes")["fence"], 2);
}

#[test]
fn one_runner_owns_a_job_and_a_stale_owner_is_fenced() {
    let server = S3Server::start();
    let sandbox = Sandbox::new();
    let owner = Running::start(
        server
            .runner(&sandbox, "owned")
            .args(["--lease", "5s", TESTJOB, "save-every"]),
        Stdio::null(),
    );
    owner.wait_for_line("ready");

    // The owner renews its lease: a second runner gives up, and the job's state cannot
    // be reset from under the owner.
    let second =
        run(server
            .runner(&sandbox, "owned")
            .args(["--lock-timeout", "3s", TESTJOB, "show"]));
    second
        .assert_code(69)
        .assert_stderr(&format!("is owned by pid {} on", owner.pid()))
        .assert_stderr("still within its lease of 5s");
    assert!(second.stdout.is_empty(), "the job ran: {}", second.stdout);
    run(&mut server.state("reset", "owned", "testjob"))
        .assert_code(69)
        .assert_stderr("stop that run");

    // The owner stops renewing without dying (a paused process, a partitioned node):
    // once its lease has run out, a new runner takes the job over.
    owner.signal(libc::SIGSTOP);
    let new = Running::start(
        server
            .runner(&sandbox, "owned")
            .args(["--lock-timeout", "10m", TESTJOB, "wait"]),
        Stdio::null(),
    );
    new.wait_for_line("ready");
    owner.signal(libc::SIGCONT);

    // The old owner's next save, or its lease renewal, finds the head taken: its job is
    // stopped, and nothing it wrote is named by the head.
    let old = owner.wait();
    old.assert_code(69).assert_stderr(
        "another runner has taken this job over: this run's fencing number is 1, the \
         newest is 2",
    );
    new.signal(SIGTERM);
    let new = new.wait();
    new.assert_code(75).assert_stderr(&format!(
        "took job `s3://{BUCKET}/owned/testjob` over from pid"
    ));
    let record = server.record("owned", "testjob", "latest");
    assert_eq!(record.fence, 2, "{record:?}");
    assert_eq!(
        sdk_state(&record.payload),
        r#"{"note":"suspended after wait","runs":2}"#
    );
    let head = server.head("owned", "testjob");
    assert_eq!(head["fence"], 2, "{head}");
    assert_eq!(head["owner"], Value::Null, "{head}");
}

#[test]
fn a_crashed_owner_keeps_its_successor_waiting_for_its_lease_only() {
    let server = S3Server::start();
    let sandbox = Sandbox::new();
    let owner = Running::start(
        server
            .runner(&sandbox, "crashed")
            .args(["--lease", "2s", TESTJOB, "wait"]),
        Stdio::null(),
    );
    owner.wait_for_line("ready");
    let pid = owner.pid();
    owner.signal(libc::SIGKILL);
    owner.wait();
    // Not released: the head still names the dead owner.
    assert!(server.head("crashed", "testjob")["owner"].is_string());

    // --lock-timeout is for an owner seen renewing its lease; this one never will, so
    // even a short one does not send the successor away.
    let start = Instant::now();
    let successor =
        run(server
            .runner(&sandbox, "crashed")
            .args(["--lock-timeout", "1s", TESTJOB, "show"]));
    successor
        .assert_code(0)
        .assert_stdout("note= runs=0")
        .assert_stderr(&format!(
            "took job `s3://{BUCKET}/crashed/testjob` over from pid {pid} on"
        ));
    // One lease of an unchanged head (by the successor's clock), not --lock-timeout, nor
    // the minute of clock skew a renewal time older than the lease is also allowed.
    let waited = start.elapsed();
    assert!(
        Duration::from_secs(2) <= waited && waited < Duration::from_secs(60),
        "{waited:?}"
    );
}

#[test]
fn saves_fail_with_io_while_the_server_is_down_and_nothing_committed_is_lost() {
    let mut server = S3Server::start();
    let sandbox = Sandbox::new();
    let log = sandbox.path().join("termination-log");
    let saving = Running::start(
        server
            .runner(&sandbox, "down")
            .args(["--lease", "1s", "--termination-log"])
            .arg(&log)
            .args([TESTJOB, "save-every"]),
        Stdio::null(),
    );
    saving.wait_for_line("ready");
    wait_until("a few saves", || {
        let head = server.head("down", "testjob");
        (head["latest"]["sequence"].as_u64()? >= 5).then_some(())
    });
    server.stop();
    // The job's save fails; it gives up (its choice), and says why.
    let failed = saving.wait();
    failed
        .assert_code(1)
        .assert_stderr("checkpoint not saved: cannot write `s3://checkpoints/down/testjob/")
        .assert_stderr("Connection refused");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&log).expect("a summary")).expect("JSON");
    let committed = summary["checkpoint_sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("no checkpoint in {summary}"));

    // Everything committed before the server went is there when it is back.
    server.restart();
    let resumed = run(server.runner(&sandbox, "down").args([TESTJOB, "show"]));
    resumed
        .assert_code(0)
        .assert_stdout("note=saved by save-every runs=1");
    let from: u64 = resumed
        .stderr
        .split("resuming job `testjob` from checkpoint ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resume in:\n{}", resumed.stderr));
    assert!(
        from >= committed,
        "resumed from {from}, {committed} was committed"
    );
}

#[test]
fn an_unreachable_server_or_a_bad_location_is_a_clear_error() {
    let sandbox = Sandbox::new();
    let mut server = S3Server::start();
    server.stop();
    let unreachable = run(server.runner(&sandbox, "nowhere").args([TESTJOB, "show"]));
    // The infrastructure's failure, which may pass: a retry, not the job's failure.
    unreachable
        .assert_code(74)
        .assert_stderr("cannot load the state of job `testjob`")
        .assert_stderr("Connection refused")
        .assert_stderr("this may pass: run the job again later; exit 74");
    assert!(unreachable.stdout.is_empty());

    let bad = run(bare_runner().args(["--state-dir", "s3://No_Such/bucket", TESTJOB, "show"]));
    bad.assert_code(2)
        .assert_stderr("invalid --state-dir: `s3://No_Such/bucket` does not name a bucket");
    let output = run(server.runner(&sandbox, "out").args([
        "--output",
        &sandbox.output_dir().display().to_string(),
        TESTJOB,
        "show",
    ]));
    output
        .assert_code(2)
        .assert_stderr("it needs a local --state-dir");
}

#[test]
fn a_server_that_fails_at_the_start_is_a_retry_and_one_that_refuses_is_an_error() {
    let sandbox = Sandbox::new();
    for (status, code) in [(503, 74), (500, 74), (429, 74), (403, 2)] {
        let server = FixedAnswer::start(status);
        let mut runner = bare_runner();
        use_endpoint(&mut runner, server.port, "failing");
        let log = sandbox.path().join(format!("termination-log-{status}"));
        let done = run(runner
            .env("RUNNER_CACHE_DIR", sandbox.cache_dir())
            .arg("--termination-log")
            .arg(&log)
            .args([TESTJOB, "show"]));
        done.assert_code(code)
            .assert_stderr("cannot load the state of job `testjob`")
            .assert_stderr(&status.to_string());
        assert!(done.stdout.is_empty(), "{status}: the job ran");
        assert_eq!(done.stderr.lines().count(), 1, "{status}: {}", done.stderr);
        let summary = std::fs::read_to_string(&log).expect("a summary");
        let outcome = if code == 74 { "unavailable" } else { "error" };
        assert!(
            summary.contains(&format!(r#""outcome":"{outcome}","exit_code":{code}"#)),
            "{status}: {summary}"
        );
    }
}
