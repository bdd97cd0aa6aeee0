//! deploy/'s Kubernetes manifests: valid against the Kubernetes API schema (with
//! kubernetes-validate, which ships the schemas; `tests/prerequisites.sh` installs it in
//! .venv), and consistent with the runner: the grace period fits in the pod's, and the
//! pod failure policy maps the runner's real exit codes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use runner::Outcome;
use runner::outcome::StopReason;
use serde_json::Value;

use crate::util::{Sandbox, venv, workspace};

const MANIFESTS: [&str; 4] = [
    "job.yaml",
    "indexed-job.yaml",
    "indexed-job-s3.yaml",
    "queue-worker.yaml",
];

/// The oldest Kubernetes the manifests claim to need, and the newest schema we have.
const VERSIONS: [&str; 2] = ["1.31.0", "1.37.0"];

/// Whether kubernetes-validate accepts `manifest` (strict: no unknown fields) for
/// `version`, and what it said.
fn validate(manifest: &Path, version: &str) -> (bool, String) {
    let output = Command::new(venv("kubernetes-validate"))
        .args(["--strict", "--no-warn", "-k", version])
        .arg(manifest)
        .output()
        .expect("run kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn the_manifests_are_valid_kubernetes_objects() {
    for manifest in MANIFESTS {
        let path = workspace().join("deploy").join(manifest);
        for version in VERSIONS {
            let (valid, said) = validate(&path, version);
            assert!(valid, "{manifest} against Kubernetes {version}:\n{said}");
        }
    }
}

#[test]
fn the_validator_rejects_what_kubernetes_would() {
    // So that the test above cannot pass by checking nothing: the same manifest with a
    // misspelt field, and with a wrong type, is refused.
    let sandbox = Sandbox::new();
    let text = std::fs::read_to_string(workspace().join("deploy/job.yaml")).expect("job.yaml");
    for (from, to) in [
        ("podReplacementPolicy:", "podReplacementPolicyy:"),
        ("backoffLimit: 3", "backoffLimit: three"),
    ] {
        assert!(text.contains(from));
        let broken = sandbox.path().join("broken.yaml");
        std::fs::write(&broken, text.replacen(from, to, 1)).expect("write");
        let (valid, _) = validate(&broken, VERSIONS[1]);
        assert!(!valid, "a manifest with `{to}` passed");
    }
}

/// The Job objects in `manifest`, as JSON.
fn jobs(manifest: &str) -> Vec<Value> {
    let output = Command::new(venv("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::fs::File::open(workspace().join("deploy").join(manifest)).expect("open"))
        .output()
        .expect("run python");
    assert!(output.status.success(), "{output:?}");
    let objects: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    objects
        .into_iter()
        .filter(|object| object["kind"] == "Job")
        .collect()
}

fn codes(outcomes: &[Outcome]) -> BTreeSet<u64> {
    outcomes
        .iter()
        .map(|outcome| u64::from(outcome.exit_code()))
        .collect()
}

#[test]
fn the_jobs_fit_the_runner_s_grace_period_and_exit_codes() {
    let job_errors = codes(&[
        Outcome::JobFailed(String::new()),
        Outcome::Failed(anyhow::anyhow!("")),
        Outcome::Trapped(String::new()),
    ]);
    let stopped = codes(&[
        Outcome::Suspended,
        Outcome::Forced(StopReason::Hangup),
        Outcome::Forced(StopReason::Interrupt),
        Outcome::Forced(StopReason::Terminate),
    ]);
    // With the state in a bucket, pods of one job may overlap (a partitioned node): the
    // one fenced off or kept out is not a failure, as another carries the job on.
    let owned_elsewhere = codes(&[
        Outcome::Forced(StopReason::Fenced),
        Outcome::Locked(String::new()),
    ]);
    // What may pass (an outage of the state's store at the start) is counted: retried,
    // with a back-off, up to the limit; neither failed at once nor ignored.
    let retried = codes(&[
        Outcome::Unavailable(anyhow::anyhow!("")),
        Outcome::Forced(StopReason::Timeout),
    ]);
    for manifest in MANIFESTS {
        let jobs = jobs(manifest);
        assert_eq!(jobs.len(), 1, "{manifest}");
        let spec = &jobs[0]["spec"];
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{manifest}");
        assert_eq!(spec["podReplacementPolicy"], "Failed", "{manifest}");

        // The runner's grace period, and the 3s a stuck job may take after it, end well
        // before the kubelet's SIGKILL.
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|arg| arg.as_str().expect("a string"))
            .collect();
        let grace = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--grace="))
            .unwrap_or_else(|| panic!("{manifest}: no --grace in {args:?}"));
        let grace = runner::human::parse_duration(grace).expect("a duration");
        let termination = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("a number");
        assert!(
            grace.as_secs() + 5 <= termination,
            "{manifest}: --grace {grace:?} leaves less than 5s of {termination}s"
        );

        // What the rules do with each exit code is what that code means.
        let mut fail = BTreeSet::new();
        let mut ignore = BTreeSet::new();
        let rules = spec["podFailurePolicy"]["rules"].as_array().expect("rules");
        // The first rule that matches decides: a disruption is never a failure, whatever
        // the exit code, so its rule comes first.
        assert_eq!(
            rules[0]["onPodConditions"][0]["type"], "DisruptionTarget",
            "{manifest}: the first rule"
        );
        let mut ignores_disruptions = false;
        for rule in rules {
            let action = rule["action"].as_str().expect("an action");
            if let Some(on) = rule.get("onExitCodes") {
                assert_eq!(on["containerName"], container["name"], "{manifest}");
                assert_eq!(on["operator"], "In", "{manifest}");
                let values = on["values"].as_array().expect("values").iter();
                let values = values.map(|value| value.as_u64().expect("a code"));
                match action {
                    "FailJob" | "FailIndex" => fail.extend(values),
                    "Ignore" => ignore.extend(values),
                    other => panic!("{manifest}: unexpected action {other}"),
                }
            } else {
                assert_eq!(action, "Ignore");
                assert_eq!(rule["onPodConditions"][0]["type"], "DisruptionTarget");
                ignores_disruptions = true;
            }
        }
        let env = container["env"].as_array().expect("env");
        // The runner serves its metrics on the port the scrape annotations name.
        let annotations = &spec["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{manifest}");
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{manifest}");
        let port: u64 = annotations["prometheus.io/port"]
            .as_str()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("{manifest}: no port in {annotations}"));
        let metrics_addr = env
            .iter()
            .find(|var| var["name"] == "RUNNER_METRICS_ADDR")
            .and_then(|var| var["value"].as_str())
            .unwrap_or_else(|| panic!("{manifest}: no RUNNER_METRICS_ADDR"));
        assert_eq!(metrics_addr, format!(":{port}"), "{manifest}");
        assert!(
            container["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .any(|each| each["name"] == "metrics" && each["containerPort"] == port),
            "{manifest}: no container port {port} named metrics"
        );
        let state_dir = env
            .iter()
            .find(|var| var["name"] == "RUNNER_STATE_DIR")
            .and_then(|var| var["value"].as_str());
        let in_a_bucket = state_dir.is_some_and(|dir| dir.starts_with("s3://"));
        assert_eq!(fail, job_errors, "{manifest}: the codes that fail fast");
        let expected: BTreeSet<u64> = if in_a_bucket {
            stopped.union(&owned_elsewhere).copied().collect()
        } else {
            stopped.clone()
        };
        assert_eq!(ignore, expected, "{manifest}: the codes of a stopped job");
        assert!(
            retried.is_disjoint(&fail) && retried.is_disjoint(&ignore),
            "{manifest}: {retried:?} must count against the back-off limit"
        );
        // Exit 75 never counts: only a deadline bounds a Job whose pods keep stopping.
        assert!(
            spec["activeDeadlineSeconds"]
                .as_u64()
                .is_some_and(|seconds| seconds > 0),
            "{manifest}: no activeDeadlineSeconds"
        );
        assert!(ignores_disruptions, "{manifest}");
        assert_eq!(
            container["terminationMessagePolicy"], "FallbackToLogsOnError",
            "{manifest}"
        );
        let mounts = container["volumeMounts"].as_array().expect("mounts");
        // The image's RUNNER_STATE_DIR is /state: a volume there, or state elsewhere.
        assert_eq!(
            mounts.iter().any(|mount| mount["mountPath"] == "/state"),
            state_dir.is_none(),
            "{manifest}: a volume for the state exactly when it is kept in /state"
        );
        if let Some(dir) = state_dir {
            assert!(in_a_bucket, "{manifest}: RUNNER_STATE_DIR {dir}");
            let location = runner::checkpoint::Location::parse(dir.into());
            assert!(
                location.is_ok_and(|location| location.local_dir().is_none()),
                "{manifest}: {dir}"
            );
        }
    }

    for manifest in ["indexed-job.yaml", "indexed-job-s3.yaml"] {
        check_shards(manifest);
    }
}

/// Each index passes its number on to the job, which has as many shards as the Job has
/// completions.
fn check_shards(manifest: &str) {
    let indexed = &jobs(manifest)[0]["spec"];
    assert_eq!(indexed["completionMode"], "Indexed");
    let args = &indexed["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = args
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--env=JOB_COMPLETION_INDEX"),
        "{manifest}: {args:?}"
    );
    assert_eq!(
        args.last().and_then(|shards| shards.parse::<u64>().ok()),
        indexed["completions"].as_u64(),
        "{manifest}"
    );
}
