//! How a job that runs to its end ends: the exit codes of the table in DESIGN.md.

use crate::util::{Sandbox, run};
use test_guests::{CORE_COMMAND, PRIMES, TESTJOB};

#[test]
fn a_job_that_completes_exits_0_with_its_output() {
    let sandbox = Sandbox::new();
    let done = run(sandbox.runner().args([PRIMES, "2000000"]));
    done.assert_code(0);
    assert_eq!(done.stdout, "primes below 2000000: 148933\n");
}

#[test]
fn a_job_that_returns_an_error_exits_1_with_the_cause_chain() {
    let sandbox = Sandbox::new();
    let done = run(sandbox.runner().args([TESTJOB, "error"]));
    done.assert_code(1);
    assert!(
        done.stderr
            .contains("runner: job failed: cannot write the report: the disk is on fire"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_job_that_traps_exits_134_with_the_trap_and_wasm_backtrace() {
    let sandbox = Sandbox::new();
    let done = run(sandbox.runner().args([TESTJOB, "trap"]));
    done.assert_code(134);
    done.assert_stderr("the job panicked on purpose");
    assert!(
        done.stderr
            .contains("runner: job trapped: wasm trap: wasm `unreachable`"),
        "{}",
        done.stderr
    );
    done.assert_stderr("testjob.wasm!testjob::run");
}

#[test]
fn a_job_that_exits_with_a_code_exits_with_that_code() {
    let sandbox = Sandbox::new();
    for code in ["0", "3", "42", "255"] {
        let done = run(sandbox.runner().args([TESTJOB, "exit", code]));
        done.assert_code(code.parse().expect("number"));
        assert_eq!(done.stderr, "", "an exit is not an error");
    }
    // Rust's std::process::exit can only say success or failure through WASI 0.2.
    run(sandbox.runner().args([TESTJOB, "std-exit", "3"])).assert_code(1);
}

#[test]
fn arguments_and_environment_reach_the_job_and_nothing_else() {
    let sandbox = Sandbox::new();
    let done = run(sandbox
        .runner()
        .env("FROM_RUNNER", "passed")
        .env("NOT_PASSED", "secret")
        .args(["--env", "A=1=2", "--env", "FROM_RUNNER"])
        .args([TESTJOB, "args", "--grace", "x y"]));
    done.assert_code(0);
    assert!(
        done.stdout
            .contains(r#"args=["testjob.wasm", "args", "--grace", "x y"]"#),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains(r#"env=[("A", "1=2"), ("FROM_RUNNER", "passed")]"#),
        "{}",
        done.stdout
    );
}

/// `--inherit-env` passes the runner's environment, but not its own settings nor the
/// credentials it uses (RUNNER_*, AWS_*) unless named with `--env`, whose values win;
/// the same for a core module.
#[test]
fn inherit_env_passes_the_environment_but_the_runners_settings_and_credentials() {
    let sandbox = Sandbox::new();
    let inherited = |job: &str, args: &[&str]| {
        let mut command = sandbox.runner();
        command
            .env("FROM_RUNNER", "passed")
            .env("OVERRIDDEN", "inherited")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_REGION", "eu-west-3")
            .env("RUNNER_LOG_FORMAT", "text")
            .args([
                "--inherit-env",
                "--env",
                "OVERRIDDEN=given",
                "--env",
                "AWS_REGION",
            ])
            .arg(job)
            .args(args);
        run(&mut command)
    };
    let done = inherited(TESTJOB, &["args"]);
    done.assert_code(0);
    let env = done
        .stdout
        .lines()
        .find(|line| line.starts_with("env="))
        .expect("the job's environment");
    for wanted in [
        r#"("FROM_RUNNER", "passed")"#,
        r#"("OVERRIDDEN", "given")"#,
        r#"("AWS_REGION", "eu-west-3")"#,
        r#"("PATH", "#,
    ] {
        assert!(env.contains(wanted), "{wanted}: {env}");
    }
    for unwanted in ["inherited", "AWS_SECRET_ACCESS_KEY", "RUNNER_"] {
        assert!(!env.contains(unwanted), "{unwanted}: {env}");
    }
    assert_eq!(env.matches("\"OVERRIDDEN\"").count(), 1, "{env}");
    for (name, shown) in [
        ("FROM_RUNNER", "FROM_RUNNER=passed"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY is not set"),
        ("RUNNER_LOG_FORMAT", "RUNNER_LOG_FORMAT is not set"),
    ] {
        let core = inherited(CORE_COMMAND, &["env", name]);
        core.assert_code(0);
        assert_eq!(core.stdout, format!("{shown}\n"));
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let done = run(Sandbox::new().runner().arg("--help"));
    done.assert_code(0);
    for line in [
        "Exit codes:",
        "75 ",
        "124 ",
        "130 ",
        "143 ",
        "134 ",
        "--grace <DURATION>",
    ] {
        assert!(
            done.stdout.contains(line),
            "--help lacks `{line}`:\n{}",
            done.stdout
        );
    }
}

/// A job that cannot find a file is told which host directories it sees, and WASI's
/// error numbers (which are not the host's) are left out of the message.
#[test]
fn a_missing_file_names_the_directories_the_job_sees() {
    let sandbox = Sandbox::new();
    let missing = run(sandbox.runner().args([TESTJOB, "read", "/etc/hostname"]));
    missing
        .assert_code(1)
        .assert_stderr("cannot read /etc/hostname: No such file or directory")
        .assert_stderr("(the job sees no host directory: give it one with --dir HOST[::GUEST])");
    assert!(!missing.stderr.contains("os error"), "{}", missing.stderr);

    let data = sandbox.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let shown = run(sandbox
        .runner()
        .arg("--dir")
        .arg(format!("{}::/data", data.display()))
        .args(["--job-id", "reader", TESTJOB, "read", "/data/nothing"]));
    shown.assert_code(1).assert_stderr(&format!(
        "(the job sees only the directories given with --dir and --output: `/data` (host `{}`)",
        data.display()
    ));
}
