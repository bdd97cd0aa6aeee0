//! Builds the guest components the integration tests run, from source, for
//! wasm32-wasip2, and exports their paths as constants (as wasmtime's
//! test-programs-artifacts does). The nested cargo uses its own target directory: the
//! outer build holds the lock on the workspace's.

use std::env;
use std::path::Path;
use std::process::Command;

#[path = "../nested_cargo.rs"]
mod nested_cargo;

/// (package, artifact file name, constant name)
const GUESTS: &[(&str, &str, &str)] = &[
    ("primes", "primes.wasm", "PRIMES"),
    ("wordcount", "wordcount.wasm", "WORDCOUNT"),
    ("sequence", "sequence.wasm", "SEQUENCE"),
    ("worker", "worker.wasm", "WORKER"),
    ("test-jobs", "testjob.wasm", "TESTJOB"),
    ("test-jobs", "command.wasm", "COMMAND"),
];

/// (Python job, component file name, constant name)
const PYTHON_GUESTS: &[(&str, &str, &str)] = &[
    (
        "examples/python-wordcount/wordcount.py",
        "python-wordcount.wasm",
        "PYTHON_WORDCOUNT",
    ),
    (
        "tests/jobs/python/testjob.py",
        "python-testjob.wasm",
        "PYTHON_TESTJOB",
    ),
];

fn main() {
    let nested_cargo::Nested {
        workspace,
        out_dir,
        target_dir,
    } = nested_cargo::Nested::new(&["guest-sdk", "examples", "tests/jobs", "wit", "Cargo.lock"]);

    check_target_installed();
    let mut command = nested_cargo::build(&workspace, "wasm32-wasip2", &target_dir);
    command.arg("--release");
    let mut packages: Vec<&str> = GUESTS.iter().map(|(package, _, _)| *package).collect();
    packages.dedup();
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .expect("cannot run cargo to build the guest components");
    assert!(
        status.success(),
        "building the guest components failed: {status}"
    );

    let mut constants = String::new();
    for (_, file, name) in GUESTS {
        let path = target_dir.join("wasm32-wasip2/release").join(file);
        assert!(
            path.is_file(),
            "the guest build did not produce {}",
            path.display()
        );
        constants.push_str(&format!(
            "/// The path of `{file}`, built from source for this test build.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    for (job, file, name) in PYTHON_GUESTS {
        let path = out_dir.join(file);
        build_python_job(&workspace, &workspace.join(job), &path);
        constants.push_str(&format!(
            "/// The path of `{job}` built into a component for this test build.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("guests.rs"), constants).expect("write guests.rs");
}

/// Builds a Python job with the SDK's build script, with the componentize-py that
/// `tests/prerequisites.sh` installs into `.venv`.
fn build_python_job(workspace: &Path, job: &Path, output: &Path) {
    let python = workspace.join(".venv/bin/python");
    println!("cargo:rerun-if-changed={}", python.display());
    assert!(
        python.exists(),
        "{} is missing: run `sh tests/prerequisites.sh`, which installs componentize-py there",
        python.display()
    );
    let status = Command::new(&python)
        .arg(workspace.join("guest-sdk/python/build_job.py"))
        .arg(job)
        .arg("-o")
        .arg(output)
        .status()
        .expect("cannot run guest-sdk/python/build_job.py");
    assert!(
        status.success(),
        "building {} failed: {status}",
        job.display()
    );
}

fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("cannot run rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout);
    let target = Path::new(sysroot.trim()).join("lib/rustlib/wasm32-wasip2");
    assert!(
        target.is_dir(),
        "the wasm32-wasip2 target is not installed for this toolchain: run `rustup target add wasm32-wasip2`"
    );
}
