//! The job's network: nothing without `--allow-net`, and with it only what the list
//! names, checked against real listeners on 127.0.0.1 that count the connections
//! that reach them; and a job blocked on a socket is still stopped at the deadline.

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
