//! Stop, run again, resume: the examples give the same answer however often they are
//! interrupted, and a resumed run continues from its checkpoint instead of restarting.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use crate::util::{Running, SIGTERM, Sandbox, run, state_field};
use test_guests::{PRIMES, WORDCOUNT};

/// Runs `args` as job `job_id`, stopping it with SIGTERM after each of `stops` new
/// checkpoints, then lets it finish. Returns the finishing run's stdout.
fn run_with_stops(
    sandbox: &Sandbox,
    job_id: &str,
    args: &[&str],
    stops: usize,
    position: &str,
) -> String {
    let mut last = 0;
    for stop in 0..stops {
        let mut running = Running::start(
            sandbox.runner().args(["--job-id", job_id]).args(args),
            Stdio::null(),
        );
        let saved = sandbox.wait_for_checkpoint_after(&mut running, job_id, last);
        running.signal(SIGTERM);
        let done = running.wait();
        done.assert_code(75);
        let suspended = sandbox
            .checkpoint(job_id)
            .expect("checkpoint after suspending");
        assert!(
            suspended.sequence > saved.sequence,
            "suspending saved no checkpoint"
        );
        assert!(
            state_field(&suspended.payload, position) >= state_field(&saved.payload, position),
            "the state went backwards"
        );
        if stop > 0 {
            // This run resumed where the previous one stopped; it did not start over.
            let resumed_from = format!("resuming job `{job_id}` from checkpoint {last}");
            done.assert_stderr(&resumed_from);
        }
        last = suspended.sequence;
    }
    let done = run(sandbox.runner().args(["--job-id", job_id]).args(args));
    done.assert_code(0);
    assert!(
        done.stderr
            .contains(&format!("resuming job `{job_id}` from checkpoint {last}")),
        "{}",
        done.stderr
    );
    done.stdout
}

#[test]
fn primes_interrupted_again_and_again_prints_what_an_uninterrupted_run_prints() {
    let sandbox = Sandbox::new();
    let args = [PRIMES, "30000000"];
    let whole = run(sandbox.runner().args(["--job-id", "whole"]).args(args));
    whole.assert_code(0);
    assert_eq!(whole.stdout, "primes below 30000000: 1857859\n");

    let split = run_with_stops(&sandbox, "split", &args, 3, "next");
    assert_eq!(split, whole.stdout);
}

#[test]
fn primes_resumes_from_the_exact_position_it_saved() {
    let sandbox = Sandbox::new();
    let args = [PRIMES, "30000000"];
    let mut running = Running::start(sandbox.runner().args(args), Stdio::null());
    sandbox.wait_for_checkpoint_after(&mut running, "primes", 0);
    running.signal(SIGTERM);
    running.wait().assert_code(75);
    let saved = sandbox.checkpoint("primes").expect("checkpoint");
    let next = state_field(&saved.payload, "next");
    assert!(next > 0 && next < 30_000_000, "next={next}");

    let done = run(sandbox.runner().args(args));
    done.assert_code(0);
    let count = state_field(&saved.payload, "count");
    done.assert_stderr(&format!(
        "primes: resuming at {next} with {count} primes found"
    ));
}

/// Deterministic text: `lines` lines of ten words from a 500-word vocabulary.
fn write_text(path: &Path, seed: u64, lines: usize) {
    let mut state = seed;
    let mut text = String::new();
    for _ in 0..lines {
        for word in 0..10 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if word > 0 {
                text.push(' ');
            }
            text.push_str(&format!("w{}", (state >> 33) % 500));
        }
        text.push_str(".\n");
    }
    fs::write(path, text).expect("write input");
}

#[test]
fn wordcount_resumes_by_file_and_offset_with_the_same_result() {
    let sandbox = Sandbox::new();
    let input = sandbox.path().join("input");
    fs::create_dir_all(input.join("nested")).expect("mkdir");
    // About 45 MB: several seconds of counting, so that each stop (one second of work
    // or more) leaves work for the next run.
    write_text(&input.join("a.txt"), 1, 300_000);
    write_text(&input.join("b.txt"), 2, 300_000);
    write_text(&input.join("nested/c.txt"), 3, 300_000);
    let dir = format!("{}::/input", input.display());
    let args = ["--dir", &dir, WORDCOUNT, "/input", "5"];

    let whole = run(sandbox.runner().args(["--job-id", "whole"]).args(args));
    whole.assert_code(0);
    assert!(
        whole
            .stdout
            .starts_with("9000000 words, 500 distinct, in 3 files\n"),
        "{}",
        whole.stdout
    );
    assert_eq!(whole.stdout.lines().count(), 6, "{}", whole.stdout);

    let split = run_with_stops(&sandbox, "split", &args, 2, "done_bytes");
    assert_eq!(split, whole.stdout);
}
