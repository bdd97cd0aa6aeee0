//! Chaos: `sequence` and `primes` under repeated random interruptions (SIGTERM with a
//! random grace, zero included; SIGKILL at random instants; SIGKILL in the middle of a
//! commit), restarted until they complete, then checked record by record.
//!
//! `CHAOS_INTERRUPTIONS` sets how many interruptions each job gets (20 by default, the
//! CI's short mode); `CHAOS_SEED` replays a run. The long mode is in the README:
//! `CHAOS_INTERRUPTIONS=200 cargo test -p runner --test integration chaos -- --nocapture`.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use test_guests::PRIMES;

use crate::util::{Running, SIGTERM, Sandbox, run, signal_if_alive, takes_sigterm, wait_until};

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

/// Runs `command` once and interrupts it at random; returns whether the job completed.
fn interrupted_run(
    command: &Command,
    max_delay: Duration,
    rng: &mut StdRng,
    tally: &mut Tally,
) -> bool {
    let kind = rng.random_range(0..3);
    let mut command = match kind {
        // SIGKILL at the n-th fsync of the run: inside a commit (the start makes 2 or 3
        // fsyncs, which the first commit waits for, so counts from 4 are commits).
        2 => {
            let mut strace = Command::new("strace");
            strace
                .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e"])
                .arg(format!(
                    "inject=fsync:signal=KILL:when={}",
                    rng.random_range(4..16)
                ))
                .arg(command.get_program())
                .args(command.get_args());
            strace
        }
        _ => {
            let mut plain = Command::new(command.get_program());
            plain.args(command.get_args());
            plain
        }
    };
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
        return true;
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
    false
}

/// Rounds of one job, each a fresh state run to completion under interruptions, until
/// `wanted` interruptions in all; `check` looks at a round's state after each run
/// (`done` once the job completed) and returns the records it checked.
fn chaos(
    job: &str,
    max_delay: Duration,
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
        loop {
            runs += 1;
            // Once enough interruptions happened, the round's last run is left alone.
            if tally.interruptions() >= wanted {
                let finished = run(&mut command(&sandbox));
                finished.assert_code(0);
                records += check(&sandbox, &finished, true);
                break;
            }
            let before = tally.interruptions();
            if interrupted_run(&command(&sandbox), max_delay, &mut rng, &mut tally) {
                let finished = run(&mut command(&sandbox));
                finished.assert_code(0);
                records += check(&sandbox, &finished, true);
                break;
            }
            assert_eq!(tally.interruptions(), before + 1);
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

#[test]
fn chaos_sequence() {
    const LINES: u64 = 1500;
    chaos(
        "sequence",
        Duration::from_millis(1500),
        |sandbox| sandbox.sequence(LINES),
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

/// The number of primes below `limit`, by a sieve: an independent check of the job.
fn primes_below(limit: usize) -> usize {
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

#[test]
fn chaos_primes() {
    const LIMIT: usize = 20_000_000;
    let expected = format!("primes below {LIMIT}: {}", primes_below(LIMIT));
    chaos(
        "primes",
        Duration::from_millis(1500),
        |sandbox| {
            let mut command = sandbox.runner();
            command.args([PRIMES, &LIMIT.to_string()]);
            command
        },
        |_, finished, _| {
            assert_eq!(finished.stdout.trim(), expected);
            1
        },
    );
}
