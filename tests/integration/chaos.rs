//! Chaos: `sequence` (in Rust, Python and JavaScript) and `primes` under repeated random interruptions (SIGTERM with a
//! random grace, zero included; SIGKILL at random instants; SIGKILL in the middle of a
//! commit), restarted until they complete, then checked record by record; and `primes`
//! so with its checkpoints in a bucket (SIGKILL at a request, as a commit's record is
//! uploaded or its head swapped).
//!
//! `CHAOS_INTERRUPTIONS` sets how many interruptions each job gets (20 by default, the
//! CI's short mode); `CHAOS_SEED` replays a run. The long mode is in the README:
//! `CHAOS_INTERRUPTIONS=200 cargo test -p runner --test integration chaos -- --nocapture`.

use std::ops::Range;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use test_guests::{PRIMES, QUEUE_WORKER};

use crate::redis::Redis;
use crate::s3::S3Server;

use crate::util::{
    Running, SIGTERM, Sandbox, primes_below, run, signal_if_alive, takes_sigterm, wait_until,
};

fn interruptions() -> u32 {
    std::env::var("CHAOS_INTERRUPTIONS")
        .ok()
        .map(|text| text.parse().expect("CHAOS_INTERRUPTIONS is a number"))
        .unwrap_or(20)
}

fn rng(job: &str) -> StdRng {
    let seed = std::env::var("CHAOS_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64)
        },
        |text| text.parse().expect("CHAOS_SEED is a number"),
    );
    eprintln!("chaos {job}: CHAOS_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

#[derive(Debug, Default)]
struct Tally {
    term: u32,
    kill: u32,
    kill_in_commit: u32,
}

impl Tally {
    fn interruptions(&self) -> u32 {
        self.term + self.kill + self.kill_in_commit
    }
}

/// Where a run is killed inside a commit: at the n-th call of `syscall`, n in `calls`.
struct Fault {
    syscall: &'static str,
    calls: Range<u32>,
}

/// The local store: the start makes 2 or 3 fsyncs, which the first commit waits for, so
/// counts from 4 are commits.
const IN_A_LOCAL_COMMIT: Fault = Fault {
    syscall: "fsync",
    calls: 4..16,
};

/// The S3 store: each request is one writev, and the kill comes as it starts (before the
/// request is sent). The start makes 6 or 7 requests, after which come commits (two
/// each: the record, then the head) and lease renewals: a kill between a commit's
/// upload and its swap, before either, or before a renewal.
const IN_AN_S3_REQUEST: Fault = Fault {
    syscall: "writev",
    calls: 7..24,
};

/// Runs `command` once and interrupts it at random; returns whether the job completed,
/// and how the run ended.
fn interrupted_run(
    template: &Command,
    max_delay: Duration,
    fault: &Fault,
    rng: &mut StdRng,
    tally: &mut Tally,
) -> (bool, crate::util::Finished) {
    let kind = rng.random_range(0..3);
    let mut command = match kind {
        // SIGKILL at the n-th call of the fault's system call: inside a commit.
        2 => {
            let mut strace = Command::new("strace");
            strace
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("trace={}", fault.syscall))
                .arg("-e")
                .arg(format!(
                    "inject={}:signal=KILL:when={}",
                    fault.syscall,
                    rng.random_range(fault.calls.clone())
                ))
                .arg(template.get_program())
                .args(template.get_args());
            strace
        }
        _ => {
            let mut plain = Command::new(template.get_program());
            plain.args(template.get_args());
            plain
        }
    };
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.env_remove("RUNNER_STATE_DIR");
    if kind == 0 {
        let grace = if rng.random_bool(0.3) {
            0
        } else {
            rng.random_range(1..300)
        };
        command.env("RUNNER_GRACE", format!("{grace}ms"));
    } else {
        command.env_remove("RUNNER_GRACE");
    }
    let running = Running::start(&mut command, Stdio::null());
    let runner_pid = if kind == 2 {
        running.child_pid()
    } else {
        running.pid()
    };
    let delay = rng.random_range(Duration::ZERO..max_delay);
    let start = Instant::now();
    let mut running = running;
    if kind == 0 {
        // Between exec and the first line of `main` no process can handle a signal:
        // SIGTERM goes once the runner blocks or catches it, as any real sender's would
        // after the container started.
        wait_until("the runner to take SIGTERM", || {
            takes_sigterm(runner_pid).then_some(())
        });
    }
    while start.elapsed() < delay && running.child.try_wait().expect("wait").is_none() {
        thread::sleep(Duration::from_millis(2));
    }
    if running.child.try_wait().expect("wait").is_none() {
        // A run that got past its last commit without reaching the fault is killed too.
        signal_if_alive(runner_pid, if kind == 0 { SIGTERM } else { libc::SIGKILL });
    }
    let finished = running.wait();
    if finished.status.code() == Some(0) {
        return (true, finished);
    }
    match kind {
        0 => {
            assert!(
                matches!(finished.status.code(), Some(75 | 143)),
                "SIGTERM: {finished:?}"
            );
            tally.term += 1;
        }
        1 => tally.kill += 1,
        _ => tally.kill_in_commit += 1,
    }
    (false, finished)
}

/// Rounds of one job, each a fresh state run to completion under interruptions, until
/// `wanted` interruptions in all; `check` looks at a round's state after each run
/// (`done` once the job completed) and returns the records it checked.
fn chaos(
    job: &str,
    max_delay: Duration,
    fault: &Fault,
    command: impl Fn(&Sandbox) -> Command,
    mut check: impl FnMut(&Sandbox, &crate::util::Finished, bool) -> u64,
) {
    let wanted = interruptions();
    let mut rng = rng(job);
    let mut tally = Tally::default();
    let (mut rounds, mut runs, mut records) = (0, 0, 0);
    while tally.interruptions() < wanted {
        let sandbox = Sandbox::new();
        rounds += 1;
        // The round's last interrupted run that printed something: its output is the
        // job's if it was killed after it recorded the job's completion.
        let mut printed = None;
        loop {
            runs += 1;
            // Once enough interruptions happened, the round's last run is left alone.
            let finished = if tally.interruptions() >= wanted {
                let finished = run(&mut command(&sandbox));
                finished.assert_code(0);
                finished
            } else {
                let before = tally.interruptions();
                let (completed, interrupted) =
                    interrupted_run(&command(&sandbox), max_delay, fault, &mut rng, &mut tally);
                if !completed {
                    records += check(&sandbox, &interrupted, false);
                    assert_eq!(tally.interruptions(), before + 1);
                    if !interrupted.stdout.is_empty() {
                        printed = Some(interrupted);
                    }
                    continue;
                }
                interrupted
            };
            let finished = match printed.take() {
                Some(printed) if finished.stderr.contains("not running it again") => printed,
                _ => finished,
            };
            records += check(&sandbox, &finished, true);
            // A completed job is not run again.
            let rerun = run(&mut command(&sandbox));
            rerun.assert_code(0).assert_stderr("not running it again");
            assert!(
                rerun.stdout.is_empty(),
                "the job ran again: {}",
                rerun.stdout
            );
            break;
        }
    }
    eprintln!(
        "chaos {job}: {} interruptions ({} SIGTERM, {} SIGKILL at random, {} SIGKILL in a \
         commit) over {rounds} round(s), {runs} runs; {records} records checked (for primes: \
         final counts), all exact",
        tally.interruptions(),
        tally.term,
        tally.kill,
        tally.kill_in_commit,
    );
}

/// How many lines the `sequence` jobs write under chaos.
const LINES: u64 = 1500;

/// `sequence` (`LINES` lines to `--output`) under chaos, run by `command`: every line
/// exactly once, in order, whatever interrupted it.
fn chaos_of_sequence(name: &str, max_delay: Duration, command: impl Fn(&Sandbox) -> Command) {
    chaos(
        name,
        max_delay,
        &IN_A_LOCAL_COMMIT,
        |sandbox| command(sandbox),
        |sandbox, _, done| {
            sandbox.assert_sequence_consistent();
            if !done {
                return 0;
            }
            let check = sandbox.check_sequence_output(LINES);
            assert!(check.is_exact(LINES), "{check:?}");
            check.records
        },
    );
}

/// The Rust example, which writes through the SDK's buffered `ctx.output`.
#[test]
fn chaos_sequence() {
    chaos_of_sequence("sequence", Duration::from_millis(1500), |sandbox| {
        sandbox.sequence(LINES)
    });
}

/// The Python test job's `sequence`, which writes through a buffered file opened with
/// plain `open`.
#[test]
fn chaos_python_sequence() {
    chaos_of_test_job_sequence("python-sequence", test_guests::PYTHON_TESTJOB);
}

/// The JavaScript test job's `sequence`, which writes through `ctx.output`.
#[test]
fn chaos_js_sequence() {
    chaos_of_test_job_sequence("js-sequence", test_guests::JS_TESTJOB);
}

/// `job sequence LINES` (a test job's mode) with the sandbox's output directory.
fn chaos_of_test_job_sequence(name: &str, job: &str) {
    chaos_of_sequence(name, Duration::from_millis(2000), |sandbox| {
        let mut command = sandbox.runner();
        command
            .args(["--job-id", "sequence", "--output"])
            .arg(sandbox.output_dir())
            .args([job, "sequence", &LINES.to_string()]);
        command
    });
}

#[test]
fn chaos_primes() {
    const LIMIT: usize = 20_000_000;
    let expected = format!("primes below {LIMIT}: {}", primes_below(LIMIT));
    chaos(
        "primes",
        Duration::from_millis(1500),
        &IN_A_LOCAL_COMMIT,
        |sandbox| {
            let mut command = sandbox.runner();
            command.args([PRIMES, &LIMIT.to_string()]);
            command
        },
        |_, finished, done| {
            if !done {
                return 0;
            }
            assert_eq!(finished.stdout.trim(), expected);
            1
        },
    );
}

#[test]
fn chaos_primes_s3() {
    const LIMIT: usize = 20_000_000;
    let expected = format!("primes below {LIMIT}: {}", primes_below(LIMIT));
    let server = S3Server::start();
    // Each round's job under a prefix of its own.
    let prefix = |sandbox: &Sandbox| {
        let name = sandbox
            .path()
            .file_name()
            .expect("a name")
            .to_string_lossy();
        format!("chaos-{}", name.trim_start_matches('.'))
    };
    // The newest checkpoint of the round (of its prefix) so far: no run may go back on it.
    let mut newest = (String::new(), 0);
    chaos(
        "primes-s3",
        Duration::from_millis(1500),
        &IN_AN_S3_REQUEST,
        |sandbox| {
            let mut command = server.runner(sandbox, &prefix(sandbox));
            // A killed runner keeps its successor waiting for its lease: keep it short.
            command.args(["--lease", "1s", PRIMES, &LIMIT.to_string()]);
            command
        },
        |sandbox, finished, done| {
            // After every run, the job's state reads as it should: no record the head
            // names is damaged or missing, so nothing falls back.
            let prefix = prefix(sandbox);
            if newest.0 != prefix {
                newest = (prefix.clone(), 0);
            }
            let shown = run(&mut server.state("show", &prefix, "primes"));
            if shown.code() == 2 {
                // Killed before it took the job: nothing was written.
                shown.assert_stderr("has no state");
            } else {
                let sequence = server.head(&prefix, "primes")["latest"]["sequence"]
                    .as_u64()
                    .unwrap_or(0);
                assert!(
                    sequence >= newest.1,
                    "checkpoint {sequence} after {}",
                    newest.1
                );
                newest.1 = sequence;
                shown.assert_code(0);
                assert!(
                    !shown.stdout.contains("unusable") && !shown.stdout.contains("note:"),
                    "{}",
                    shown.stdout
                );
            }
            if !done {
                return 0;
            }
            assert_eq!(finished.stdout.trim(), expected);
            1
        },
    );
}

/// `examples/queue-worker`: 3 workers over 500 messages in a real Redis, stopped by
/// random SIGTERMs and SIGKILLs and restarted until they have drained the queue. Every
/// message is handled and acknowledged, none is lost; one handled twice (a SIGKILL
/// between its handling and its acknowledgement) is allowed, and counted.
#[test]
fn chaos_queue_workers() {
    const MESSAGES: usize = 500;
    const WORKERS: usize = 3;
    let sandbox = Sandbox::new();
    let redis = Redis::start(&sandbox);
    let messages: Vec<String> = (1..=MESSAGES).map(|n| format!("m{n}")).collect();
    for chunk in messages.chunks(100) {
        let mut push = vec!["RPUSH", "jobs"];
        push.extend(chunk.iter().map(String::as_str));
        redis.command(&push);
    }
    let start = |id: usize| {
        let mut command = sandbox.runner();
        command
            .args(["--allow-net", &redis.address(), "--job-id"])
            .arg(format!("worker-{id}"))
            .arg("--env")
            .arg(format!("WORKER_ID={id}"))
            .arg("--env")
            .arg(format!("REDIS_ADDR={}", redis.address()))
            .args([QUEUE_WORKER, "--drain"]);
        Running::start(&mut command, Stdio::null())
    };
    let mut rng = rng("queue-worker");
    let stops = interruptions();
    let (mut terms, mut kills) = (0, 0);
    let mut workers: Vec<Option<Running>> = (0..WORKERS).map(|id| Some(start(id))).collect();
    let mut drained = [false; WORKERS];
    let began = Instant::now();
    while !drained.iter().all(|&drained| drained) {
        assert!(
            began.elapsed() < Duration::from_secs(600),
            "the workers did not drain the queue in 10 minutes"
        );
        thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        for id in 0..WORKERS {
            let exited = match &mut workers[id] {
                Some(worker) => worker
                    .child
                    .try_wait()
                    .expect("wait for a worker")
                    .is_some(),
                None => !drained[id],
            };
            if !exited {
                continue;
            }
            if let Some(worker) = workers[id].take() {
                let done = worker.wait();
                match done.status.code() {
                    Some(0) => {
                        drained[id] = true;
                        continue;
                    }
                    // Suspended (or stopped before it started), stopped by force (a
                    // second SIGTERM), or SIGKILLed.
                    Some(75 | 143) | None => {}
                    Some(_) => panic!("worker {id} failed: {done:?}"),
                }
            }
            workers[id] = Some(start(id));
        }
        if terms + kills < stops {
            let alive: Vec<usize> = (0..WORKERS).filter(|&id| workers[id].is_some()).collect();
            if let Some(&id) = alive.get(rng.random_range(0..alive.len().max(1))) {
                let pid = workers[id].as_ref().expect("alive").pid();
                if rng.random_bool(0.5) {
                    signal_if_alive(pid, SIGTERM);
                    terms += 1;
                } else {
                    signal_if_alive(pid, libc::SIGKILL);
                    kills += 1;
                }
            }
        }
    }

    assert_eq!(
        redis.command(&["LLEN", "jobs"]),
        ["0"],
        "messages left in the queue"
    );
    for id in 0..WORKERS {
        assert_eq!(
            redis.command(&["LLEN", &format!("jobs:processing:{id}")]),
            ["0"],
            "messages of worker {id} not acknowledged"
        );
    }
    let processed = redis.command(&["HGETALL", "jobs:processed"]);
    let counts: std::collections::HashMap<&str, u32> = processed
        .chunks(2)
        .map(|pair| (pair[0].as_str(), pair[1].parse().expect("a count")))
        .collect();
    let lost: Vec<&String> = messages
        .iter()
        .filter(|message| !counts.contains_key(message.as_str()))
        .collect();
    let duplicates: u32 = counts.values().map(|count| count - 1).sum();
    eprintln!(
        "chaos queue-worker: {MESSAGES} messages, {WORKERS} workers, {terms} SIGTERMs, \
         {kills} SIGKILLs, {duplicates} handled twice, {} lost, in {:.1?}",
        lost.len(),
        began.elapsed()
    );
    assert!(lost.is_empty(), "messages lost: {lost:?}");
    assert_eq!(
        counts.len(),
        MESSAGES,
        "unknown messages handled: {counts:?}"
    );
    assert!(
        duplicates <= kills,
        "{duplicates} messages handled twice with only {kills} SIGKILLs"
    );
}
