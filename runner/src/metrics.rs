//! `--metrics-addr`: the run's metrics as OpenMetrics text, for Prometheus to scrape while
//! the runner lives.
//!
//! Every figure is read when it is scraped, from what the run keeps anyway (its
//! [`RunStatus`] and [`Shutdown`]): serving metrics adds nothing to a progress report,
//! and to a commit only what the run's status always does (two counters and the
//! histogram). The server is a thread of its own with a blocking listener, not a task of
//! the runtime, so that it answers until the process exits, after the runtime is gone:
//! the run's outcome is there from the moment it is known.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::StopReason;
use crate::shutdown::Shutdown;
use crate::summary::RunStatus;

/// The media type of OpenMetrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send its request or read the answer: one slow client
/// holds up the next (they are answered one at a time).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Starts serving the metrics of the run of `job_id` at `http://ADDR/metrics`; returns
/// the address it listens on (a port 0 becomes the one the system chose).
pub fn serve(
    addr: &str,
    job_id: &str,
    status: Arc<RunStatus>,
    shutdown: Arc<Shutdown>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(parse_addr(addr)?)
        .with_context(|| format!("cannot listen on --metrics-addr `{addr}`"))?;
    let local = listener.local_addr()?;
    let mut registry = Registry::with_prefix("runner");
    registry.register_collector(Box::new(RunMetrics {
        job_id: job_id.to_owned(),
        status,
        shutdown,
    }));
    std::thread::Builder::new()
        .name("runner-metrics".into())
        .spawn(move || {
            for client in listener.incoming().flatten() {
                // A client that goes away or sends nonsense is its own problem.
                let _ = answer(client, &registry);
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(local)
}

/// `HOST:PORT`, `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for every IPv4 address.
fn parse_addr(addr: &str) -> Result<SocketAddr> {
    let full = match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| {
            anyhow!(
                "--metrics-addr `{addr}` is not an address to listen on: give HOST:PORT, \
                 IP:PORT or :PORT (for example `:9090`)"
            )
        })
}

/// Answers one HTTP/1.1 request: `GET /metrics` (or `HEAD`) with the metrics, anything
/// else with an error; then closes the connection.
fn answer(mut client: TcpStream, registry: &Registry) -> io::Result<()> {
    client.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    client.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0; 2048];
    while !head.windows(4).any(|end| end == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(
                &mut client,
                "431 Request Header Fields Too Large",
                "",
                "",
                true,
            );
        }
        let read = client.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = head.split(|&byte| byte == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry)
                .map_err(io::Error::other)?;
            respond(&mut client, "200 OK", CONTENT_TYPE, &text, method == "GET")
        }
        ("GET" | "HEAD", _) => respond(
            &mut client,
            "404 Not Found",
            "text/plain; charset=utf-8",
            "the runner's metrics are at /metrics\n",
            method == "GET",
        ),
        _ => respond(
            &mut client,
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n",
            true,
        ),
    }
}

fn respond(
    client: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        response.push_str("Content-Type: ");
        response.push_str(content_type);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    if with_body {
        response.push_str(body);
    }
    client.write_all(response.as_bytes())
}

/// The run's metrics, read from its status at each scrape.
#[derive(Debug)]
struct RunMetrics {
    job_id: String,
    status: Arc<RunStatus>,
    shutdown: Arc<Shutdown>,
}

/// Encodes `metric` (its samples have no labels of their own) as `name`.
fn one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// What a run goes through, in order; `runner_run_state` is 1 for the current one.
const STATES: [&str; 4] = ["starting", "running", "stopping", "exited"];

impl Collector for RunMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let status = &self.status;
        let info = Info::new([
            ("job_id", self.job_id.as_str()),
            ("run_id", crate::log::run_id()),
        ]);
        one(
            &mut encoder,
            "run",
            "the job this runner runs, and this run's id (as in its logs and summary)",
            None,
            &info,
        )?;

        let exit = status.exit();
        let state = if exit.is_some() {
            "exited"
        } else if self.shutdown.current().is_some() {
            "stopping"
        } else if status.running() {
            "running"
        } else {
            "starting"
        };
        let mut states = encoder.encode_descriptor(
            "run_state",
            "the run's state: starting (before the job runs: lock, compile), running, \
             stopping (asked to stop), exited (the summary is written)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for name in STATES {
            ConstGauge::new(i64::from(name == state))
                .encode(states.encode_family(&[("state", name)])?)?;
        }
        if let Some((_, code)) = exit {
            one(
                &mut encoder,
                "exit_code",
                "the code the runner exits with, once the run is over",
                None,
                &ConstGauge::new(i64::from(code)),
            )?;
        }

        if let Some((done, total)) = status.progress() {
            one(
                &mut encoder,
                "progress_done",
                "the job's latest progress report: work done",
                None,
                &ConstGauge::new(done),
            )?;
            if let Some(total) = total {
                one(
                    &mut encoder,
                    "progress_total",
                    "the job's latest progress report: all the work, if it said",
                    None,
                    &ConstGauge::new(total),
                )?;
            }
        }

        let commits = status.commits();
        one(
            &mut encoder,
            "checkpoints_committed",
            "checkpoints this run committed",
            None,
            &ConstCounter::new(commits.count),
        )?;
        one(
            &mut encoder,
            "checkpoint_saved",
            "the size of the states this run committed",
            Some(&Unit::Bytes),
            &ConstCounter::new(commits.bytes),
        )?;
        one(
            &mut encoder,
            "checkpoint_commit",
            "how long a commit took, from the job's save to the record in place",
            Some(&Unit::Seconds),
            &commits.latency,
        )?;
        if let Some(sequence) = status.checkpoint() {
            one(
                &mut encoder,
                "checkpoint_sequence",
                "the sequence number of the job's latest checkpoint (loaded or committed)",
                None,
                &ConstGauge::new(sequence),
            )?;
        }

        let mut requests = encoder.encode_descriptor(
            "stop_requests",
            "requests to stop the job, by what asked: a signal, --timeout, or fencing",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for reason in StopReason::ALL {
            ConstCounter::new(self.shutdown.requests(reason))
                .encode(requests.encode_family(&[("reason", reason.name())])?)?;
        }
        Ok(())
    }
}
