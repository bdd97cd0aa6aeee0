//! The runner as a container's entrypoint, under a real OCI runtime: each test builds
//! the image with `deploy/build-image` (FROM scratch: the static runner and the jobs),
//! unpacks it with umoci into a runc bundle, and runs containers from it with runc,
//! with a state directory bind-mounted at /state and a termination log at
//! /dev/termination-log, as Kubernetes gives a pod. The containers are stopped with
//! `runc kill`, as the kubelet does through its runtime.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt as _;
use serde_json::{Value, json};
use test_guests::{PRIMES, TESTJOB};

use crate::util::{Finished, Running, Sandbox, wait_until};

/// The uid and gid the image's Dockerfile runs as.
const USER: u32 = 65532;

/// The image, unpacked: a root file system and the config runc runs it with.
struct Image {
    sandbox: Sandbox,
    rootfs: PathBuf,
    config: Value,
}

impl Image {
    /// Builds the image of the static runner with `primes` and `testjob`, in a sandbox
    /// whose state directory is owned by the image's user.
    fn build() -> Self {
        let sandbox = Sandbox::new();
        let layout = sandbox.path().join("layout");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-image");
        succeed(
            Command::new("bash")
                .arg(script)
                .args(["--runner", static_runner::RUNNER, "--layout"])
                .arg(&layout)
                .args(["--tag", "test", PRIMES, TESTJOB]),
        );
        let bundle = sandbox.path().join("bundle");
        succeed(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:test", layout.display()))
                .arg(&bundle),
        );
        let config = std::fs::read_to_string(bundle.join("config.json")).expect("config.json");
        let state = sandbox.state_dir();
        std::fs::create_dir_all(&state).expect("create the state directory");
        std::os::unix::fs::chown(&state, Some(USER), Some(USER)).expect("chown the state");
        Image {
            rootfs: bundle.join("rootfs"),
            config: serde_json::from_str(&config).expect("config.json is JSON"),
            sandbox,
        }
    }

    /// A container of this image that runs `/runner ARGS` with the environment `env`
    /// added. Its root file system is read-only, as a careful pod's is: the runner
    /// writes only to /state, /cache (a tmpfs here, an emptyDir in deploy/) and the
    /// termination log.
    fn container(&self, args: &[&str], env: &[&str]) -> Container {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "runner-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = self.sandbox.path().join(&id);
        std::fs::create_dir(&bundle).expect("create the bundle");
        let log = bundle.join("termination-log");
        std::fs::write(&log, "").expect("create the termination log");
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("chmod the termination log");

        let mut config = self.config.clone();
        let process = &mut config["process"];
        process["terminal"] = json!(false);
        let mut argv = vec!["/runner"];
        argv.extend(args);
        process["args"] = json!(argv);
        for variable in env {
            process["env"]
                .as_array_mut()
                .expect("process.env")
                .push(json!(variable));
        }
        config["root"] = json!({"path": self.rootfs, "readonly": true});
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        mounts.push(json!({"destination": "/state", "type": "bind",
            "source": self.sandbox.state_dir(), "options": ["rbind", "rw"]}));
        mounts.push(
            json!({"destination": "/cache", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", format!("uid={USER}"), format!("gid={USER}")]}),
        );
        mounts.push(
            json!({"destination": "/dev/termination-log", "type": "bind",
            "source": log, "options": ["bind", "rw"]}),
        );
        std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
        Container { id, bundle, log }
    }
}

/// A container; removed, if it still exists, when dropped.
struct Container {
    id: String,
    bundle: PathBuf,
    log: PathBuf,
}

impl Container {
    /// `runc run` in the foreground: it exits with the container's exit status.
    fn start(&self) -> Running {
        Running::start(
            Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&self.bundle)
                .arg(&self.id),
            Stdio::null(),
        )
    }

    fn run(&self) -> Finished {
        self.start().wait()
    }

    /// Sends `signal` (TERM, KILL) to the container's PID 1, as the kubelet does; a
    /// container that has just exited is not an error (the test checks how it ended).
    fn kill(&self, signal: &str) {
        let _ = Command::new("runc")
            .args(["kill", &self.id, signal])
            .stderr(Stdio::null())
            .status();
    }

    /// The summary the runner left in the termination log.
    fn summary(&self) -> Value {
        let text = std::fs::read_to_string(&self.log).expect("read the termination log");
        assert!(
            text.len() <= 4096,
            "a termination message of {} bytes",
            text.len()
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("the termination log `{text}`: {error}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

fn succeed(command: &mut Command) {
    let output = command.output().expect("start the command");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// About 5 s of work: long enough to be stopped in the middle.
const LIMIT: &str = "30000000";
const ANSWER: &str = "primes below 30000000: 1857859\n";

/// A container counting primes, once it has committed its first checkpoint.
fn start_primes(image: &Image) -> (Container, Running) {
    let container = image.container(&["/jobs/primes.wasm", LIMIT], &[]);
    let mut running = container.start();
    image
        .sandbox
        .wait_for_checkpoint_after(&mut running, "primes", 0);
    (container, running)
}

#[test]
fn sigterm_suspends_the_container_and_a_new_one_resumes_to_the_right_answer() {
    let image = Image::build();
    let (first, running) = start_primes(&image);
    let asked = Instant::now();
    first.kill("TERM");
    let stopped = running.wait();
    eprintln!("runc kill TERM -> container exit: {:?}", asked.elapsed());
    stopped
        .assert_code(75)
        .assert_stderr("runner: received SIGTERM: asking the job to stop")
        .assert_stderr("job suspended");
    let saved = image
        .sandbox
        .checkpoint("primes")
        .expect("a checkpoint on the volume");
    let summary = first.summary();
    assert_eq!(summary["outcome"], "suspended", "{summary}");
    assert_eq!(summary["exit_code"], 75);
    assert_eq!(summary["stop_reason"], "SIGTERM");
    assert_eq!(summary["job_id"], "primes");
    assert_eq!(summary["checkpoint_sequence"], saved.sequence);
    assert!(summary["progress"]["done"].as_u64() > Some(0), "{summary}");

    let second = image.container(&["/jobs/primes.wasm", LIMIT], &[]);
    let done = second.run();
    done.assert_code(0).assert_stderr(&format!(
        "resuming job `primes` from checkpoint {} in `/state/primes`",
        saved.sequence
    ));
    assert_eq!(done.stdout, ANSWER);
    let summary = second.summary();
    assert_eq!(summary["outcome"], "completed", "{summary}");
    assert_eq!(summary["stop_reason"], Value::Null);
}

#[test]
fn after_sigkill_at_a_random_moment_a_new_container_resumes_from_the_last_checkpoint() {
    let image = Image::build();
    let (first, running) = start_primes(&image);
    std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..2000)));
    first.kill("KILL");
    let killed = running.wait();
    assert_ne!(
        killed.status.code(),
        Some(0),
        "the job finished first: {killed:?}"
    );
    // Nothing runs any more: what is on the volume is what the next container gets.
    let last = image.sandbox.checkpoint("primes").expect("a checkpoint");

    let second = image.container(&["/jobs/primes.wasm", LIMIT], &[]);
    let done = second.run();
    done.assert_code(0).assert_stderr(&format!(
        "resuming job `primes` from checkpoint {} in `/state/primes`",
        last.sequence
    ));
    assert_eq!(done.stdout, ANSWER);
}

#[test]
fn a_job_that_ignores_the_request_is_stopped_by_the_runner_before_the_kill() {
    // As a pod with terminationGracePeriodSeconds: 10 and the runner's --grace 2s.
    const TERMINATION_GRACE: Duration = Duration::from_secs(10);
    let image = Image::build();
    let container = image.container(&["/jobs/testjob.wasm", "spin"], &["RUNNER_GRACE=2s"]);
    let mut running = container.start();
    running.wait_for_line("ready");
    let asked = Instant::now();
    container.kill("TERM");
    let exited = wait_until("the container's exit", || {
        if asked.elapsed() > TERMINATION_GRACE {
            // The kubelet's SIGKILL: the runner did not exit on its own.
            container.kill("KILL");
            return Some(false);
        }
        running.child.try_wait().ok().flatten().map(|_| true)
    });
    let stopped = running.wait();
    assert!(
        exited,
        "the container was still running after {TERMINATION_GRACE:?}: {stopped:?}"
    );
    stopped
        .assert_code(143)
        .assert_stderr("the grace period of 2s ran out: stopping the job by force");
    let summary = container.summary();
    assert_eq!(summary["outcome"], "stopped-by-force", "{summary}");
    assert_eq!(summary["exit_code"], 143);
    assert_eq!(summary["stop_reason"], "SIGTERM");
    assert_eq!(summary["checkpoint_sequence"], 1);
}

#[test]
fn each_index_of_an_indexed_job_is_its_own_job() {
    let image = Image::build();
    let mut total = 0;
    for index in 0..2 {
        let container = image.container(
            &[
                "--env",
                "JOB_COMPLETION_INDEX",
                "/jobs/primes.wasm",
                "100000",
                "2",
            ],
            &[&format!("JOB_COMPLETION_INDEX={index}")],
        );
        let done = container.run();
        done.assert_code(0);
        let (shard, count) = done.stdout.trim().split_once(": ").expect("a count");
        assert_eq!(shard, format!("primes below 100000 in shard {index} of 2"));
        total += count.parse::<u32>().expect("a number");
        assert_eq!(container.summary()["job_id"], format!("primes-{index}"));
        assert!(image.sandbox.job_dir(&format!("primes-{index}")).is_dir());
    }
    assert_eq!(
        total, 9592,
        "the shards' counts add up to the primes below 100000"
    );
}
