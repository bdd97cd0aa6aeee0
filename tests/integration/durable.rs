//! Durable checkpoints: exactly-once output, fallback to the previous generation, no
//! silent start from scratch, `runner state`.

use std::fs;
use std::process::Stdio;

use runner::checkpoint::Record;
use test_guests::TESTJOB;

use crate::util::{Running, SIGTERM, Sandbox, run};

/// Lines that take several checkpoints: long enough to interrupt, short enough to finish.
const LINES: u64 = 600;

/// `sequence`'s lines written unbuffered (the test job's `unbuffered`), as job
/// `sequence`: the lines after a save are on the file at once, for the runner to undo.
fn unbuffered_sequence(sandbox: &Sandbox) -> std::process::Command {
    let mut command = sandbox.runner();
    command
        .args(["--job-id", "sequence", "--output"])
        .arg(sandbox.output_dir())
        .args([TESTJOB, "unbuffered", &LINES.to_string()]);
    command
}

#[test]
fn sequence_output_is_exactly_once_across_kills_and_stops() {
    let sandbox = Sandbox::new();
    // Killed after its second checkpoint, with lines written after it.
    let mut running = Running::start(&mut unbuffered_sequence(&sandbox), Stdio::null());
    let second = sandbox.wait_for_checkpoint_after(&mut running, "sequence", 1);
    let committed_len = second.outputs[0].len;
    let out = sandbox.output_dir().join("out.txt");
    crate::util::wait_until("lines after the checkpoint", || {
        (fs::metadata(&out).ok()?.len() > committed_len + 20).then_some(())
    });
    let _ = running.child.kill();
    running.wait();
    let committed = sandbox.assert_sequence_consistent();
    assert!(committed >= 100, "{committed}");

    // Stopped on request after resuming: the undone lines are written again, once.
    let mut running = Running::start(&mut unbuffered_sequence(&sandbox), Stdio::null());
    let last = sandbox.checkpoint("sequence").expect("checkpoint").sequence;
    sandbox.wait_for_checkpoint_after(&mut running, "sequence", last);
    running.signal(SIGTERM);
    let stopped = running.wait();
    stopped.assert_code(75);
    stopped.assert_stderr("undid what the job wrote");
    sandbox.assert_sequence_consistent();

    run(&mut unbuffered_sequence(&sandbox)).assert_code(0);
    let check = sandbox.check_sequence_output(LINES);
    assert!(check.is_exact(LINES), "{check:?}");
}

#[test]
fn a_torn_checkpoint_falls_back_to_the_previous_generation_loudly() {
    let sandbox = Sandbox::new();
    let mut running = Running::start(&mut sandbox.sequence(LINES), Stdio::null());
    sandbox.wait_for_checkpoint_after(&mut running, "sequence", 2);
    let _ = running.child.kill();
    running.wait();
    // A torn newest record, as a crash on a file system that lies about fsync leaves.
    let newest = sandbox.job_dir("sequence").join("checkpoint");
    let bytes = fs::read(&newest).expect("read checkpoint");
    fs::write(&newest, &bytes[..bytes.len() - 5]).expect("tear checkpoint");

    let finished = run(&mut sandbox.sequence(LINES));
    finished.assert_code(0);
    assert!(
        finished
            .stderr
            .contains("falling back to the previous generation")
            && finished.stderr.contains(&*newest.to_string_lossy()),
        "{}",
        finished.stderr
    );
    let check = sandbox.check_sequence_output(LINES);
    assert!(check.is_exact(LINES), "{check:?}");
}

#[test]
fn no_usable_checkpoint_refuses_to_start_until_asked_to_start_over() {
    let sandbox = Sandbox::new();
    let running = Running::start(
        sandbox.runner().args(["--grace", "0s", TESTJOB, "spin"]),
        Stdio::null(),
    );
    running.wait_for_line("ready");
    running.signal(SIGTERM);
    running.wait().assert_code(143);
    let newest = sandbox.job_dir("testjob").join("checkpoint");
    fs::write(&newest, b"RUNRCKPT and then garbage").expect("damage checkpoint");

    let refused = run(sandbox.runner().args([TESTJOB, "show"]));
    refused.assert_code(2);
    assert!(
        refused.stderr.contains(&*newest.to_string_lossy())
            && refused.stderr.contains("--start-over"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        fs::read(&newest).expect("still there"),
        b"RUNRCKPT and then garbage",
        "refusing must not change the state"
    );

    let fresh = run(sandbox.runner().args(["--start-over", TESTJOB, "show"]));
    fresh.assert_code(0);
    fresh.assert_stdout("note= runs=0");
    fresh.assert_stderr("starting over");
}

#[test]
fn a_checkpoint_written_by_another_module_is_loaded_and_the_change_noted() {
    let sandbox = Sandbox::new();
    let dir = sandbox.job_dir("testjob");
    fs::create_dir_all(&dir).expect("job dir");
    let record = Record {
        sequence: 4,
        fence: 2,
        written_at_ms: 1_700_000_000_000,
        module_digest: [7; 32],
        output_dir: None,
        outputs: Vec::new(),
        payload: br#"{"state":{"note":"from the old version","runs":3},"batches":[]}"#.to_vec(),
        completed: false,
    };
    fs::write(dir.join("checkpoint"), record.encode()).expect("write record");
    let finished = run(sandbox.runner().args([TESTJOB, "show"]));
    finished.assert_code(0);
    finished.assert_stdout("note=from the old version runs=3");
    assert!(
        finished
            .stderr
            .contains("written by another module (sha256 0707070707070707)"),
        "{}",
        finished.stderr
    );
}

#[test]
fn an_output_directory_with_unrecorded_files_is_refused() {
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.output_dir()).expect("output dir");
    fs::write(sandbox.output_dir().join("precious.txt"), "keep me").expect("write");
    let refused = run(&mut sandbox.sequence(10));
    refused.assert_code(2);
    refused.assert_stderr("already holds files");
    assert_eq!(
        fs::read_to_string(sandbox.output_dir().join("precious.txt")).expect("kept"),
        "keep me"
    );
    // The refused run took no ownership: a second try is refused the same way.
    run(&mut sandbox.sequence(10)).assert_code(2);
    assert!(sandbox.output_dir().join("precious.txt").exists());
}

#[test]
fn a_checkpoint_tracks_its_output_directory() {
    let sandbox = Sandbox::new();
    let mut running = Running::start(&mut sandbox.sequence(LINES), Stdio::null());
    sandbox.wait_for_checkpoint_after(&mut running, "sequence", 0);
    running.signal(SIGTERM);
    running.wait().assert_code(75);
    let tracked = sandbox.output_dir().canonicalize().expect("output dir");

    // Another directory, or none: refused, naming the tracked one; nothing changes.
    let elsewhere = sandbox.path().join("elsewhere");
    let moved = run(sandbox
        .runner()
        .arg("--output")
        .arg(&elsewhere)
        .args([test_guests::SEQUENCE, "600"]));
    moved.assert_code(2);
    assert!(
        moved.stderr.contains(&format!(
            "tracks the output directory `{}`",
            tracked.display()
        )),
        "{}",
        moved.stderr
    );
    let without = run(sandbox.runner().args([test_guests::SEQUENCE, "600"]));
    without.assert_code(2);
    without.assert_stderr("pass --output");
    sandbox.assert_sequence_consistent();

    // Inside the state directory: refused.
    let inside = run(sandbox
        .runner()
        .arg("--output")
        .arg(sandbox.state_dir().join("out"))
        .args(["--job-id", "other", test_guests::SEQUENCE, "600"]));
    inside.assert_code(2);
    inside.assert_stderr("overlap");

    // Starting over empties the directory and writes it all again, once.
    let fresh = run(sandbox
        .runner()
        .arg("--start-over")
        .arg("--output")
        .arg(sandbox.output_dir())
        .args([test_guests::SEQUENCE, &LINES.to_string()]));
    fresh.assert_code(0);
    let check = sandbox.check_sequence_output(LINES);
    assert!(check.is_exact(LINES), "{check:?}");
}

#[test]
fn state_show_and_reset() {
    let sandbox = Sandbox::new();
    run(&mut sandbox.sequence(250)).assert_code(0);
    let state_dir = sandbox.state_dir();
    let show = run(crate::util::bare_runner()
        .args(["state", "show", "sequence", "--state-dir"])
        .arg(&state_dir));
    show.assert_code(0);
    for expected in [
        // The run's last save, then the record of its completion.
        "checkpoint: 4",
        "completed: yes",
        "fencing number: 1",
        "output: out.txt 892 bytes",
        "module: sha256 ",
        "generation `checkpoint.prev`: sequence 3",
        "owner: none",
    ] {
        assert!(
            show.stdout.contains(expected),
            "no `{expected}` in:\n{}",
            show.stdout
        );
    }

    // Refused while a runner owns the job.
    let running = Running::start(sandbox.runner().args([TESTJOB, "wait"]), Stdio::null());
    running.wait_for_line("ready");
    let refused = run(crate::util::bare_runner()
        .args(["state", "reset", "testjob", "--state-dir"])
        .arg(&state_dir));
    refused.assert_code(69);
    assert!(
        refused.stderr.contains(&format!("pid {}", running.pid())),
        "{}",
        refused.stderr
    );
    running.signal(SIGTERM);
    running.wait().assert_code(75);

    let reset = run(crate::util::bare_runner()
        .args(["state", "reset", "sequence", "--state-dir"])
        .arg(&state_dir));
    reset.assert_code(0);
    assert!(
        reset.stdout.contains("checkpoint: checkpoint 4") && reset.stdout.contains("fence"),
        "{}",
        reset.stdout
    );
    assert!(!sandbox.job_dir("sequence").exists());
    let gone = run(crate::util::bare_runner()
        .args(["state", "show", "sequence", "--state-dir"])
        .arg(&state_dir));
    gone.assert_code(2);
    gone.assert_stderr("has no state");
}

/// A job that writes its output through a buffered writer of its own (which no save
/// flushes) is told so, once per file, the first time a save finds the file ending in
/// the middle of a line; a job writing through `ctx.output` is not (see
/// `sequence_output_is_exactly_once_across_kills_and_stops`).
#[test]
fn a_writer_of_the_jobs_own_is_detected_at_a_save() {
    let sandbox = Sandbox::new();
    let finished = run(sandbox
        .runner()
        .arg("--output")
        .arg(sandbox.output_dir())
        .args([TESTJOB, "own-bufwriter", "3000"]));
    finished.assert_code(0).assert_stderr(
        "output `out.txt` ends in the middle of a line at this save: a buffered writer of \
         the job's own may hold the rest",
    );
    assert_eq!(
        finished
            .stderr
            .matches("ends in the middle of a line")
            .count(),
        1,
        "{}",
        finished.stderr
    );

    let sandbox = Sandbox::new();
    let sequence = run(&mut sandbox.sequence(300));
    sequence.assert_code(0);
    assert!(
        !sequence.stderr.contains("middle of a line"),
        "{}",
        sequence.stderr
    );
}
