//! The job's network: nothing without `--allow-net`, and with it only what the list
//! names, checked against real listeners on 127.0.0.1 that count the connections
//! that reach them, and a real HTTP server (`python3 -m http.server`) that logs the
//! requests; and a job blocked on a socket or an HTTP response still stops.

use std::net::{TcpListener, UdpSocket};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Finished, Running, SIGTERM, Sandbox, run, wait_until};
use test_guests::TESTJOB;

/// Runs the test job with the runner's `options` and the job's `job_args`, anew each
/// time: the job completes.
fn job(sandbox: &Sandbox, options: &[&str], job_args: &[&str]) -> Finished {
    run(sandbox
        .runner()
        .arg("--start-over")
        .args(options)
        .arg(TESTJOB)
        .args(job_args))
}

/// Runs the HTTP job with the runner's `options`, for `url`, anew each time.
fn http_job(sandbox: &Sandbox, options: &[&str], url: &str) -> Finished {
    run(sandbox
        .runner()
        .arg("--start-over")
        .args(options)
        .args([test_guests::HTTP_JOB, url]))
}

/// A TCP listener on 127.0.0.1 that counts the connections it accepts (and keeps them
/// open, writing nothing).
struct Listener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    fn new() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        thread::spawn(move || {
            let mut open = Vec::new();
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                open.push(stream);
            }
        });
        Listener { port, accepted }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

#[test]
fn without_allow_net_no_connect_lookup_or_datagram_leaves_the_job() {
    let sandbox = Sandbox::new();
    let listener = Listener::new();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    udp.set_nonblocking(true).expect("nonblocking");
    let udp_address = udp.local_addr().expect("udp address").to_string();

    // As in `wasmtime run` without -S inherit-network: no socket at all.
    job(&sandbox, &[], &["net-connect", &listener.address()])
        .assert_code(0)
        .assert_stdout(&format!(
            "connect to {} failed: Permission denied",
            listener.address()
        ));
    job(&sandbox, &[], &["net-lookup", "localhost"])
        .assert_code(0)
        .assert_stdout("lookup of localhost failed")
        .assert_stderr(
            "runner: the job may not look up `localhost`: not in --allow-net (the job has \
             no network unless given one)",
        );
    job(&sandbox, &[], &["net-udp", &udp_address])
        .assert_code(0)
        .assert_stdout(&format!("send to {udp_address} failed"));
    assert_eq!(listener.accepted(), 0, "a connection reached the listener");
    assert!(
        udp.recv(&mut [0; 64]).is_err(),
        "a datagram reached the UDP socket"
    );
}

#[test]
fn allow_net_lets_the_job_reach_what_it_names_and_nothing_else() {
    let sandbox = Sandbox::new();
    let (allowed, other) = (Listener::new(), Listener::new());
    let rule = allowed.address();
    let connect = |rule: &str, address: &str| {
        job(&sandbox, &["--allow-net", rule], &["net-connect", address])
    };

    job(
        &sandbox,
        &["--allow-net", &rule],
        &["net-connect", &allowed.address(), "3"],
    )
    .assert_code(0)
    .assert_stdout(&format!("connected to {} 3 times", allowed.address()));
    wait_until("3 connections", || (allowed.accepted() == 3).then_some(()));
    connect(&rule, &other.address())
        .assert_stdout(&format!("connect to {} failed", other.address()))
        .assert_stderr(&format!(
            "the job may not connect to {}: not in --allow-net ({rule})",
            other.address()
        ));
    assert_eq!(other.accepted(), 0, "the port not listed was reached");

    // A host name: looked up, then reachable at the addresses it resolves to, on its
    // ports only; other names are not even looked up.
    let by_name = format!("localhost:{}", allowed.port);
    connect(&by_name, &by_name)
        .assert_code(0)
        .assert_stdout(&format!("connected to {by_name}"));
    wait_until("4 connections", || (allowed.accepted() == 4).then_some(()));
    connect(&by_name, &format!("localhost:{}", other.port))
        .assert_stdout("failed")
        .assert_stderr(&format!(
            "the job may not connect to 127.0.0.1:{}",
            other.port
        ));
    job(
        &sandbox,
        &["--allow-net", &by_name],
        &["net-lookup", "localhost.localdomain"],
    )
    .assert_stdout("lookup of localhost.localdomain failed")
    .assert_stderr("the job may not look up `localhost.localdomain`");
    assert_eq!(other.accepted(), 0);

    // A block and a port range, from the environment as a manifest gives them; `*`.
    let range = format!("127.0.0.0/8:{}-{}", allowed.port, allowed.port);
    run(sandbox
        .runner()
        .arg("--start-over")
        .env("RUNNER_ALLOW_NET", format!("10.0.0.0/8, {range}"))
        .args([TESTJOB, "net-connect", &allowed.address()]))
    .assert_stdout("connected to");
    connect("*", &other.address()).assert_stdout("connected to");
    wait_until("5 and 1 connections", || {
        (allowed.accepted() == 5 && other.accepted() == 1).then_some(())
    });
}

#[test]
fn a_bad_allow_net_rule_is_refused_naming_it() {
    let sandbox = Sandbox::new();
    for (rule, problem) in [
        ("db:0", "`db:0`: `0` is not a port (1-65535)"),
        ("db:9-1", "the port range 9-1 is empty"),
        ("10.0.0.0/33", "`/33` is not a prefix length (0-32)"),
        (
            "bad_host",
            "`bad_host` is not a host name, IP address or CIDR block",
        ),
        ("[::1", "an IPv6 address opened with [ must close with ]"),
    ] {
        run(sandbox
            .runner()
            .args(["--allow-net", rule, TESTJOB, "show"]))
        .assert_code(2)
        .assert_stderr("invalid value")
        .assert_stderr(problem);
    }
}

#[test]
fn a_job_blocked_reading_a_socket_is_stopped_at_the_deadline() {
    let sandbox = Sandbox::new();
    let listener = Listener::new();
    let mut command = sandbox.runner();
    command.args([
        "--grace",
        "1s",
        "--allow-net",
        &listener.address(),
        TESTJOB,
        "net-read",
        &listener.address(),
    ]);
    let running = Running::start(&mut command, Stdio::null());
    running.wait_for_line("ready");
    assert_forced_at_the_deadline(running);
}

/// Sends SIGTERM to a job that ignores it, run with `--grace 1s`: it is stopped by force
/// (143) at the deadline, not before, and well before a SIGKILL would come.
fn assert_forced_at_the_deadline(running: Running) {
    let sent = Instant::now();
    running.signal(SIGTERM);
    let done = running.wait();
    let took = sent.elapsed();
    done.assert_code(143)
        .assert_stderr("stopping the job by force");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(30),
        "stopped {took:?} after SIGTERM"
    );
}

/// `python3 -m http.server` on 127.0.0.1, serving a directory with `data.txt`, its log
/// of requests in a file; stopped when dropped.
struct HttpServer {
    port: u16,
    log: std::path::PathBuf,
    server: std::process::Child,
}

impl HttpServer {
    fn start(sandbox: &Sandbox) -> HttpServer {
        let root = sandbox.path().join("www");
        std::fs::create_dir_all(&root).expect("create the served directory");
        std::fs::write(root.join("data.txt"), "served over HTTP\n").expect("write data.txt");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = sandbox.path().join("http.log");
        let server = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("start python3 -m http.server");
        wait_until("the HTTP server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        HttpServer { port, log, server }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/data.txt", self.port)
    }

    /// The requests the server has seen.
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("\"GET /")
            .count()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn an_http_request_leaves_the_job_only_for_a_host_and_port_allow_net_names() {
    let sandbox = Sandbox::new();
    let server = HttpServer::start(&sandbox);
    let url = server.url();
    // The connection this test made to see the server listen is not a request.
    let before = server.requests();

    http_job(&sandbox, &[], &url)
        .assert_code(0)
        .assert_stdout("request failed: ErrorCode::HttpRequestDenied")
        .assert_stderr(&format!(
            "the job may not send an HTTP request to 127.0.0.1:{}",
            server.port
        ));
    http_job(&sandbox, &["--allow-net", "127.0.0.1:1"], &url)
        .assert_stdout("request failed: ErrorCode::HttpRequestDenied");
    assert_eq!(
        server.requests(),
        before,
        "a denied request reached the server"
    );

    http_job(
        &sandbox,
        &["--allow-net", &format!("127.0.0.1:{}", server.port)],
        &url,
    )
    .assert_code(0)
    .assert_stdout("status 200, 17 bytes\nserved over HTTP\n");
    // A plain command may import wasi:http too, under the same list.
    run(sandbox
        .runner()
        .args(["--allow-net", &format!("localhost:{}", server.port)])
        .arg(test_guests::HTTP_COMMAND)
        .arg(format!("http://localhost:{}/data.txt", server.port)))
    .assert_code(0)
    .assert_stdout("status 200, 17 bytes");
    wait_until("the server's log of 2 requests", || {
        (server.requests() == before + 2).then_some(())
    });
}

#[test]
fn a_job_waiting_for_an_http_response_sees_the_stop_or_is_stopped_at_the_deadline() {
    let sandbox = Sandbox::new();
    // Accepts, and never answers.
    let listener = Listener::new();
    let url = format!("http://{}/never", listener.address());
    let start = |how: &str| {
        let mut command = sandbox.runner();
        command
            .args(["--start-over", "--grace", "1s", "--allow-net"])
            .arg(listener.address())
            .args([test_guests::HTTP_JOB, &url, how]);
        let running = Running::start(&mut command, Stdio::null());
        running.wait_for_line("ready");
        running
    };

    // Waiting on the response's pollable and the stop request at once: the stop wins.
    let waiting = start("wait");
    waiting.signal(SIGTERM);
    waiting.wait_for_line("stop seen while waiting for the response");
    waiting.wait().assert_code(75);

    // Blocked on the response alone: stopped by force at the deadline.
    assert_forced_at_the_deadline(start("block"));
}

#[test]
fn a_python_job_fetching_its_input_over_http_resumes_with_the_same_answer() {
    let sandbox = Sandbox::new();
    let server = HttpServer::start(&sandbox);
    const PARTS: u64 = 8;
    let mut expected = 0;
    for part in 0..PARTS {
        let numbers: Vec<u64> = (0..100).map(|n| part * 1000 + n).collect();
        expected += numbers.iter().sum::<u64>();
        let text: Vec<String> = numbers.iter().map(u64::to_string).collect();
        std::fs::write(
            sandbox.path().join(format!("www/part-{part}.txt")),
            text.join("\n"),
        )
        .expect("write a part");
    }
    let base = format!("http://127.0.0.1:{}", server.port);
    let fetch = |job_id: &str| {
        let mut command = sandbox.runner();
        command
            .args(["--job-id", job_id, "--allow-net"])
            .arg(format!("127.0.0.1:{}", server.port))
            .args([test_guests::PYTHON_TESTJOB, "fetch", &base])
            .arg(PARTS.to_string());
        command
    };
    let before = server.requests();

    // Uninterrupted.
    run(&mut fetch("whole"))
        .assert_code(0)
        .assert_stdout(&format!("total {expected}\n"));

    // Stopped after some parts, then run again: the same total, from where it stopped.
    let mut command = fetch("stopped");
    let running = Running::start(&mut command, Stdio::null());
    running.wait_for_line("fetched part 2");
    running.signal(SIGTERM);
    let stopped = running.wait();
    stopped.assert_code(75);
    let done_before: usize = stopped.stdout.matches("fetched part").count();
    let rerun = run(&mut fetch("stopped"));
    rerun
        .assert_code(0)
        .assert_stdout(&format!("total {expected}\n"));
    assert!(
        !rerun.stdout.contains("fetched part 0"),
        "the rerun started over:\n{}",
        rerun.stdout
    );
    assert_eq!(
        done_before + rerun.stdout.matches("fetched part").count(),
        PARTS as usize,
        "each part counted once"
    );
    // Each part fetched once in each job, but for the one a stop may cut short.
    let requests = server.requests() - before;
    assert!(
        (2 * PARTS as usize..=2 * PARTS as usize + 1).contains(&requests),
        "{requests} requests"
    );

    // Without --allow-net: refused, and the server sees nothing more.
    run(sandbox
        .runner()
        .args([test_guests::PYTHON_TESTJOB, "fetch-denied"])
        .arg(format!("{base}/part-0.txt")))
    .assert_code(0)
    .assert_stdout("refused: HttpRequestDenied");
    assert_eq!(server.requests() - before, requests);
}

#[test]
fn a_job_blocked_in_a_connect_that_never_completes_is_stopped_at_the_deadline() {
    let sandbox = Sandbox::new();
    // A listener with a backlog of 0 and one connection waiting in it, never accepted:
    // the kernel drops further SYNs, so a connect to it hangs.
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(0)\n\
             c = socket.socket(); c.connect(l.getsockname())\n\
             print(l.getsockname()[1], flush=True); time.sleep(600)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("piped")),
        &mut port,
    )
    .expect("the port");
    let port: u16 = port.trim().parse().expect("a port");
    let address = format!("127.0.0.1:{port}");

    let mut command = sandbox.runner();
    command.args([
        "--grace",
        "1s",
        "--allow-net",
        &address,
        TESTJOB,
        "net-connect",
        &address,
    ]);
    let running = Running::start(&mut command, Stdio::null());
    // The job's SYN, unanswered (state 02, SYN_SENT, towards the port).
    let remote = format!(":{port:04X} 02 ");
    wait_until("the job's connect to hang in SYN_SENT", || {
        std::fs::read_to_string("/proc/net/tcp")
            .ok()?
            .lines()
            .any(|line| line.contains(&format!("0100007F{remote}")))
            .then_some(())
    });
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_forced_at_the_deadline(running);
    }));
    let _ = holder.kill();
    let _ = holder.wait();
    if let Err(panic) = stopped {
        std::panic::resume_unwind(panic);
    }
}
