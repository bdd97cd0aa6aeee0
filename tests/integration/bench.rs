//! A smoke run of the benchmark's harness (`bench/bench.py`) with tiny counts, on the
//! test build of the runner and the test job, the same build standing in for the
//! baseline. Its figures mean nothing; it keeps the harness in step with what the runner
//! and the job print.

use std::path::Path;
use std::process::Command;

use test_guests::TESTJOB;

use crate::util::Sandbox;

#[test]
fn the_bench_harness_measures_the_stop_paths() {
    let sandbox = Sandbox::new();
    let report = sandbox.path().join("BENCHMARKS.md");
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/bench.py");
    let output = Command::new("python3")
        .arg(harness)
        .args(["--only", "request,deadline"])
        .args([
            "--request-trials",
            "3",
            "--deadline-trials",
            "2",
            "--repetitions",
            "2",
        ])
        .arg("--runner")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .arg("--baseline-runner")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .args(["--current-rev", "test", "--baseline-rev", "test"])
        .arg("--testjob")
        .arg(TESTJOB)
        .arg("--work")
        .arg(sandbox.path().join("work"))
        .arg("--out")
        .arg(&report)
        .output()
        .expect("run python3 bench/bench.py");
    assert!(
        output.status.success(),
        "the harness failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(&report).expect("the harness writes its report");
    for row in [
        "| polling the flag | 6 |",
        "| blocked in poll on the pollable | 6 |",
        "| spinning in a loop | 4 |",
        "| blocked in a host call (sleep) | 4 |",
        "## Against the baseline",
        "| Forced stop: grace deadline to process exit | spinning in a loop: p99 |",
        "Regressions: ",
        "| request → job p99 < 1 ms |",
        "| deadline → exit p99 < 5 ms |",
    ] {
        assert!(report.contains(row), "no `{row}` in the report:\n{report}");
    }
}
