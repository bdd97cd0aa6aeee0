//! The job's memory limit: `--max-memory`, and by default a cgroup's memory limit less
//! the runner's margin, so that a job that allocates without end traps (134) with a line
//! that names the limit, and the runner writes its summary, instead of the kernel's OOM
//! killer ending the runner (137).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Finished, Sandbox, run};
use test_guests::{CORE_COMMAND, TESTJOB};

/// Runs the allocating `job` with a termination log; returns how it ended and its summary.
fn hog(sandbox: &Sandbox, job: &str, mut command: Command) -> (Finished, String) {
    let summary = sandbox.path().join("summary.json");
    let _ = fs::remove_file(&summary);
    let done = run(command
        .arg("--termination-log")
        .arg(&summary)
        .args([job, "hog"]));
    let summary = fs::read_to_string(&summary).unwrap_or_default();
    (done, summary)
}

#[test]
fn max_memory_makes_a_job_that_allocates_without_end_trap_and_names_the_limit() {
    let sandbox = Sandbox::new();
    for job in [TESTJOB, CORE_COMMAND] {
        let mut command = sandbox.runner();
        command.args(["--max-memory", "128MiB"]);
        let (done, summary) = hog(&sandbox, job, command);
        done.assert_code(134)
            .assert_stdout("allocated 64 MiB")
            .assert_stderr("runner: job trapped: the job ran out of memory: it asked for ")
            .assert_stderr("more than --max-memory 128 MiB allows")
            .assert_stderr("raise --max-memory, or make the job use less");
        assert!(
            !done.stdout.contains("allocated 128 MiB"),
            "the job got past its limit:\n{}",
            done.stdout
        );
        assert!(
            summary.contains(r#""outcome":"trapped","exit_code":134"#)
                && summary.contains("the job ran out of memory"),
            "{summary}"
        );
    }
    // The same variable for a manifest; `none` lifts any limit.
    let mut command = sandbox.runner();
    command.env("RUNNER_MAX_MEMORY", "100MiB");
    let (done, _) = hog(&sandbox, TESTJOB, command);
    done.assert_code(134)
        .assert_stderr("more than --max-memory 100 MiB allows");
    for (value, problem) in [
        ("0", "0 leaves the job no memory (`none` sets no limit)"),
        ("lots", "`lots` is not a size like 512MiB"),
    ] {
        run(sandbox
            .runner()
            .args(["--max-memory", value, TESTJOB, "show"]))
        .assert_code(2)
        .assert_stderr(&format!("invalid value '{value}' for '--max-memory"))
        .assert_stderr(problem);
    }
}

/// A memory cgroup of its own with a limit, made as root (cgroup v2 where the machine
/// has it, else v1's memory controller), removed when dropped.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(limit: u64) -> Cgroup {
        let name = format!("runner-test-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, limit_file) = if fs::read_to_string(v2).is_ok_and(|c| c.contains("memory")) {
            fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory")
                .expect("enable the memory controller for child cgroups");
            (Path::new("/sys/fs/cgroup").join(name), "memory.max")
        } else {
            let v1 = Path::new("/sys/fs/cgroup/memory");
            assert!(
                v1.join("memory.limit_in_bytes").exists(),
                "this machine has no memory cgroup (neither v2 nor v1's controller)"
            );
            (v1.join(name), "memory.limit_in_bytes")
        };
        fs::create_dir(&dir)
            .unwrap_or_else(|error| panic!("create {} (as root): {error}", dir.display()));
        fs::write(dir.join(limit_file), limit.to_string()).expect("set the memory limit");
        Cgroup { dir }
    }

    /// `command`, run in this cgroup: a shell moves itself in, then executes it.
    fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.dir)
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(name, value),
                None => wrapped.env_remove(name),
            };
        }
        wrapped
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
fn in_a_cgroup_with_a_memory_limit_the_job_runs_out_before_the_runner_is_oom_killed() {
    let sandbox = Sandbox::new();
    // Compiled outside the cgroup: a first run's compile is not what this is about.
    run(sandbox.runner().args([TESTJOB, "exit", "0"])).assert_code(0);
    let cgroup = Cgroup::new(256 << 20);

    let (done, summary) = hog(&sandbox, TESTJOB, cgroup.wrap(&sandbox.runner()));
    done.assert_code(134)
        .assert_stdout("allocated 128 MiB")
        .assert_stderr("the job ran out of memory")
        .assert_stderr("(the cgroup's memory limit, 256 MiB in `")
        .assert_stderr("less 64 MiB kept for the runner)")
        .assert_stderr("raise the container's memory limit");
    assert!(
        summary.contains(r#""exit_code":134"#),
        "no summary: {summary}"
    );

    // The control: with no limit of the runner's, the kernel's OOM killer ends it, with no
    // summary.
    let mut unlimited = sandbox.runner();
    unlimited.args(["--max-memory", "none"]);
    let (done, summary) = hog(&sandbox, TESTJOB, cgroup.wrap(&unlimited));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&done.status),
        Some(libc::SIGKILL),
        "{done:?}"
    );
    assert_eq!(summary, "");
}
