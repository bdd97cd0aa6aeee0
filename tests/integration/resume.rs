//! Stop, run again, resume: the examples give the same answer however often they are
//! interrupted, and a resumed run continues from its checkpoint instead of restarting.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::{Running, SIGTERM, Sandbox, run, state_field};
use test_guests::{PRIMES, WORDCOUNT};

/// Where a job is in its work: the whole numbers at these JSON pointers of its saved
/// state, compared in order.
pub fn position(payload: &[u8], pointers: &[&str]) -> Vec<u64> {
    pointers
        .iter()
        .map(|pointer| state_field(payload, pointer))
        .collect()
}

/// Runs `args` as job `job_id`, stopping it with SIGTERM after each of `stops` new
/// checkpoints, then lets it finish. Returns the finishing run's stdout. `place` are
/// the JSON pointers of the job's place in its work, which must never go back.
pub fn run_with_stops(
    sandbox: &Sandbox,
    job_id: &str,
    args: &[&str],
    stops: usize,
    place: &[&str],
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
            position(&suspended.payload, place) >= position(&saved.payload, place),
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

    let split = run_with_stops(&sandbox, "split", &args, 3, &["/batches/0"]);
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
    let next = state_field(&saved.payload, "/batches/0");
    assert!(next > 0 && next < 30_000_000, "next={next}");

    // The resumed batch's first progress report is the place it saved.
    let done = run(sandbox.runner().args(args));
    done.assert_code(0);
    let percent = next as f64 * 100.0 / 30_000_000.0;
    done.assert_stderr(&format!("progress {next}/30000000 ({percent:.1}%)"));
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

/// Three files of `lines` lines each (about 50 bytes a line) under `input/`, two of them
/// beside each other and one nested.
pub fn big_input(sandbox: &Sandbox, lines: usize) -> PathBuf {
    let input = sandbox.path().join("input");
    fs::create_dir_all(input.join("nested")).expect("mkdir");
    write_text(&input.join("a.txt"), 1, lines);
    write_text(&input.join("b.txt"), 2, lines);
    write_text(&input.join("nested/c.txt"), 3, lines);
    input
}

#[test]
fn wordcount_resumes_by_file_and_offset_with_the_same_result() {
    let sandbox = Sandbox::new();
    // About 90 MB: about four seconds of counting on our machines, so that each stop
    // (the job saves every second) leaves work for the next run.
    let input = big_input(&sandbox, 600_000);
    let output = wordcount_stopped_twice(
        &sandbox,
        WORDCOUNT,
        &input,
        "18000000 words, 500 distinct, in 3 files",
    );
    assert_eq!(output.lines().count(), 6, "{output}");
}

/// Runs `job` (a wordcount, Rust or Python) on `input` uninterrupted, then again stopped
/// twice and resumed; checks that both runs print the same, starting with `first_line`,
/// and returns what they print.
pub fn wordcount_stopped_twice(
    sandbox: &Sandbox,
    job: &str,
    input: &Path,
    first_line: &str,
) -> String {
    let dir = format!("{}::/input", input.display());
    let args = ["--dir", &dir, job, "/input", "5"];
    let whole = run(sandbox.runner().args(["--job-id", "whole"]).args(args));
    whole.assert_code(0);
    assert!(
        whole.stdout.starts_with(&format!("{first_line}\n")),
        "{}",
        whole.stdout
    );
    let split = run_with_stops(
        sandbox,
        "split",
        &args,
        2,
        &["/batches/0/file", "/batches/0/offset"],
    );
    assert_eq!(split, whole.stdout);
    split
}

/// Completed is a state: the run that completes a job records it (with the output as the
/// job left it), a rerun does not run the job and exits 0 at once, and `--start-over`
/// runs it anew. A plain command, which has no checkpoints, runs on every run.
#[test]
fn a_completed_job_is_not_run_again_until_it_starts_over() {
    const LINES: u64 = 300;
    let sandbox = Sandbox::new();
    // The last line on progress says where the job ended, not where a line last showed.
    let first = run(&mut sandbox.sequence(LINES));
    first
        .assert_code(0)
        .assert_stderr(&format!("progress {LINES}/{LINES} (100.0%)"));
    let completed = sandbox.checkpoint("sequence").expect("a checkpoint");
    assert!(completed.completed, "{completed:?}");
    let out = sandbox.output_dir().join("out.txt");
    let written = fs::read(&out).expect("out.txt");
    // The record of the completion covers everything the job wrote.
    assert_eq!(
        completed
            .outputs
            .iter()
            .map(|output| output.len)
            .sum::<u64>(),
        written.len() as u64
    );

    let summary = sandbox.path().join("summary.json");
    let rerun = run(sandbox
        .sequence(LINES)
        .env("RUNNER_TERMINATION_LOG", &summary));
    rerun
        .assert_code(0)
        .assert_stderr(&format!(
            "job `sequence` completed at {}",
            runner::human::unix_ms(completed.written_at_ms)
        ))
        .assert_stderr(&format!(
            "(checkpoint {} in `{}`",
            completed.sequence,
            sandbox.job_dir("sequence").display()
        ))
        .assert_stderr("not running it again; --start-over runs it anew");
    assert!(rerun.stdout.is_empty(), "the job ran: {}", rerun.stdout);
    assert_eq!(fs::read(&out).expect("out.txt"), written);
    assert_eq!(sandbox.checkpoint("sequence"), Some(completed));
    let summary = fs::read_to_string(&summary).expect("a summary");
    assert!(
        summary.contains(r#""outcome":"already-completed","exit_code":0"#),
        "{summary}"
    );

    // Its output is the job's no more: a later step may take it away, and a rerun, with
    // or without --output, still only says that the job completed.
    fs::rename(&out, sandbox.path().join("taken.txt")).expect("take out.txt");
    run(&mut sandbox.sequence(LINES))
        .assert_code(0)
        .assert_stderr("not running it again");
    run(sandbox
        .runner()
        .args([test_guests::SEQUENCE, &LINES.to_string()]))
    .assert_code(0)
    .assert_stderr("not running it again");

    let again = run(sandbox
        .runner()
        .arg("--start-over")
        .arg("--output")
        .arg(sandbox.output_dir())
        .args([test_guests::SEQUENCE, &LINES.to_string()]));
    again.assert_code(0);
    assert!(
        !again.stderr.contains("not running it again"),
        "{}",
        again.stderr
    );
    assert!(sandbox.check_sequence_output(LINES).is_exact(LINES));

    for _ in 0..2 {
        let hello = run(sandbox.runner().arg(test_guests::COMMAND));
        hello.assert_code(0);
        assert_eq!(hello.stdout, "hello from a wasi:cli/command\n");
    }
}
