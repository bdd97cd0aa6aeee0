//! `--metrics-addr`: the run's metrics scraped over HTTP while the job runs and while it
//! stops; `ARGO_PROGRESS_FILE`, the job's progress as Argo Workflows reads it.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

use test_guests::TESTJOB;

use crate::util::{Running, SIGTERM, Sandbox, run, venv};

/// A port nobody listens on now (the system's choice, released for the runner).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.local_addr().expect("its address").port()
}

/// One HTTP/1.1 request to the runner's metrics server: its status line, headers and body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the runner");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: runner\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    (head.to_owned(), body.to_owned())
}

/// The value of the sample `name` (with its labels, as written) in OpenMetrics `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample `{name}` in:\n{text}"))
        .parse()
        .unwrap_or_else(|error| panic!("`{name}`: {error}"))
}

/// Parses `text` with the OpenMetrics parser of Prometheus's Python client, which
/// refuses what a Prometheus server would.
fn openmetrics(text: &str) {
    let mut parser = Command::new(venv("python"))
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             print(len(list(text_string_to_metric_families(sys.stdin.read()))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the parser");
    parser
        .stdin
        .take()
        .expect("its stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let parsed = parser.wait_with_output().expect("run the parser");
    assert!(
        parsed.status.success(),
        "not OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

fn state(text: &str) -> &'static str {
    let states = ["starting", "running", "stopping", "exited"];
    let current: Vec<_> = states
        .into_iter()
        .filter(|state| sample(text, &format!("runner_run_state{{state=\"{state}\"}}")) == 1.0)
        .collect();
    assert_eq!(current.len(), 1, "{text}");
    current[0]
}

#[test]
fn a_running_job_is_scraped_while_it_runs_and_while_it_stops() {
    let sandbox = Sandbox::new();
    let port = free_port();
    let argo = sandbox.path().join("argo-progress");
    let summary_path = sandbox.path().join("summary.json");
    let running = Running::start(
        sandbox
            .runner()
            .arg("--termination-log")
            .arg(&summary_path)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args([TESTJOB, "metrics"])
            .env("ARGO_PROGRESS_FILE", &argo),
        Stdio::null(),
    );
    running.wait_for_line("ready");

    let (head, text) = get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    openmetrics(&text);
    assert_eq!(state(&text), "running");
    assert_eq!(sample(&text, "runner_progress_done"), 3.0);
    assert_eq!(sample(&text, "runner_progress_total"), 10.0);
    assert_eq!(sample(&text, "runner_checkpoints_committed_total"), 2.0);
    assert_eq!(sample(&text, "runner_checkpoint_sequence"), 2.0);
    assert_eq!(sample(&text, "runner_checkpoint_commit_seconds_count"), 2.0);
    assert!(sample(&text, "runner_checkpoint_commit_seconds_sum") > 0.0);
    assert!(sample(&text, "runner_checkpoint_saved_bytes_total") > 0.0);
    assert_eq!(
        sample(&text, "runner_stop_requests_total{reason=\"SIGTERM\"}"),
        0.0
    );
    assert!(
        text.contains("runner_run_info{job_id=\"testjob\",run_id=\""),
        "{text}"
    );
    // Argo Workflows' progress: done/total.
    assert_eq!(
        std::fs::read_to_string(&argo).expect("the progress file"),
        "3/10"
    );

    running.signal(SIGTERM);
    running.wait_for_line("stop seen by pollable");
    let (_, text) = get(port, "/metrics");
    assert_eq!(state(&text), "stopping");
    assert_eq!(
        sample(&text, "runner_stop_requests_total{reason=\"SIGTERM\"}"),
        1.0
    );
    // Anything but /metrics is not found.
    let (head, _) = get(port, "/");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    running.wait().assert_code(75);

    // The run's id in the metrics is the one in its summary.
    let summary = std::fs::read_to_string(&summary_path).expect("a summary");
    let run_id = text
        .split("run_id=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a run id");
    assert!(
        summary.contains(&format!("\"run_id\":\"{run_id}\"")),
        "{summary}"
    );
}

#[test]
fn a_metrics_address_that_cannot_be_listened_on_is_refused() {
    let sandbox = Sandbox::new();
    let done = run(sandbox
        .runner()
        .args(["--metrics-addr", "nowhere", TESTJOB, "show"]));
    done.assert_code(2)
        .assert_stderr("--metrics-addr `nowhere` is not an address to listen on");
    // A port another process holds.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("its address").port();
    let done = run(sandbox.runner().args([
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        TESTJOB,
        "show",
    ]));
    done.assert_code(2).assert_stderr(&format!(
        "cannot listen on --metrics-addr `127.0.0.1:{port}`"
    ));
    // Nothing ran: the job's state is untouched.
    assert!(sandbox.checkpoint("testjob").is_none());
}
