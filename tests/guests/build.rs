//! Builds the guest components the integration tests run, from source, for
//! wasm32-wasip2, and the core modules, for wasm32-wasip1 (Rust) and with clang and
//! wasi-libc (C), and exports their paths as constants (as wasmtime's
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
    ("queue-worker", "queue_worker.wasm", "QUEUE_WORKER"),
    ("test-jobs", "testjob.wasm", "TESTJOB"),
    ("test-jobs", "command.wasm", "COMMAND"),
    ("http-job", "httpjob.wasm", "HTTP_JOB"),
    ("http-job", "http-command.wasm", "HTTP_COMMAND"),
];

/// (core-jobs binary, constant name): Rust wasm32-wasip1 programs.
const CORE_GUESTS: &[(&str, &str)] = &[("core-command", "CORE_COMMAND"), ("core-job", "CORE_JOB")];

/// (C source, module file name, constant name, extra linker flags): built with clang
/// against wasi-libc and `guest-sdk/c`.
const C_GUESTS: &[(&str, &str, &str, &[&str])] = &[
    (
        "examples/c-primes/primes.c",
        "c-primes.wasm",
        "C_PRIMES",
        &[],
    ),
    (
        "tests/core-jobs/c/sequence.c",
        "c-sequence.wasm",
        "C_SEQUENCE",
        &[],
    ),
    (
        "tests/core-jobs/c/unknown-import.c",
        "unknown-import.wasm",
        "C_UNKNOWN_IMPORT",
        &[],
    ),
    (
        "tests/core-jobs/c/unknown-function.c",
        "unknown-function.wasm",
        "C_UNKNOWN_FUNCTION",
        &[],
    ),
    (
        "tests/core-jobs/c/wrong-signature.c",
        "wrong-signature.wasm",
        "C_WRONG_SIGNATURE",
        &[],
    ),
    (
        "tests/core-jobs/c/no-memory.c",
        "no-memory.wasm",
        "C_NO_MEMORY",
        &["-Wl,--import-memory"],
    ),
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

/// (JavaScript or TypeScript job, component file name, constant name)
const JS_GUESTS: &[(&str, &str, &str)] = &[
    (
        "examples/js-wordcount/wordcount.js",
        "js-wordcount.wasm",
        "JS_WORDCOUNT",
    ),
    ("tests/jobs/js/testjob.ts", "js-testjob.wasm", "JS_TESTJOB"),
];

fn main() {
    let nested_cargo::Nested {
        workspace,
        out_dir,
        target_dir,
    } = nested_cargo::Nested::new(&[
        "guest-sdk",
        "examples",
        "tests/jobs",
        "tests/core-jobs",
        "wit",
        "Cargo.lock",
    ]);

    check_target_installed("wasm32-wasip2");
    check_target_installed("wasm32-wasip1");
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
    let mut command = nested_cargo::build(&workspace, "wasm32-wasip1", &target_dir);
    let status = command
        .args(["--release", "-p", "core-jobs"])
        .status()
        .expect("cannot run cargo to build the core modules");
    assert!(
        status.success(),
        "building the core modules failed: {status}"
    );
    for (bin, name) in CORE_GUESTS {
        let path = target_dir.join(format!("wasm32-wasip1/release/{bin}.wasm"));
        assert!(
            path.is_file(),
            "the core module build did not produce {}",
            path.display()
        );
        constants.push_str(&format!(
            "/// The path of `{bin}.wasm`, a wasm32-wasip1 program built for this test build.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    check_header_in_cpp(&workspace, &out_dir);
    for (source, file, name, flags) in C_GUESTS {
        let path = out_dir.join(file);
        build_c_module(&workspace, &workspace.join(source), flags, &path);
        constants.push_str(&format!(
            "/// The path of `{source}` built into a core module for this test build.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    // The jobs built with an SDK's build command.
    let sdk_jobs: [(_, BuildJob); 2] =
        [(PYTHON_GUESTS, build_python_job), (JS_GUESTS, build_js_job)];
    for (guests, build) in sdk_jobs {
        for (job, file, name) in guests {
            let path = out_dir.join(file);
            build(&workspace, &workspace.join(job), &path);
            constants.push_str(&format!(
                "/// The path of `{job}` built into a component for this test build.\npub const {name}: &str = {:?};\n",
                path.display().to_string()
            ));
        }
    }
    std::fs::write(out_dir.join("guests.rs"), constants).expect("write guests.rs");
}

/// Builds the job at the second path into the component at the third, from the workspace
/// at the first.
type BuildJob = fn(&Path, &Path, &Path);

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

/// Builds a JavaScript or TypeScript job with the SDK's build command, with the
/// packages that `tests/prerequisites.sh` installs into `guest-sdk/js/node_modules`.
fn build_js_job(workspace: &Path, job: &Path, output: &Path) {
    let sdk = workspace.join("guest-sdk/js");
    assert!(
        sdk.join("node_modules").is_dir(),
        "{} is missing: run `sh tests/prerequisites.sh`, which installs componentize-js there",
        sdk.join("node_modules").display()
    );
    let status = Command::new("node")
        .arg(sdk.join("build-job.mjs"))
        .arg(job)
        .arg("-o")
        .arg(output)
        .status()
        .expect("cannot run node guest-sdk/js/build-job.mjs (is Node.js installed?)");
    assert!(
        status.success(),
        "building {} failed: {status}",
        job.display()
    );
}

/// Builds a C program into a core module with clang, lld and wasi-libc (Debian's
/// packages, which `tests/prerequisites.sh` installs), as the README shows.
fn build_c_module(workspace: &Path, source: &Path, flags: &[&str], output: &Path) {
    let status = Command::new("clang")
        .args([
            "--target=wasm32-wasi",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
        ])
        .arg(workspace.join("guest-sdk/c"))
        .args(flags)
        .arg("-o")
        .arg(output)
        .arg(source)
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run clang ({error}): run `sh tests/prerequisites.sh`, which installs it")
        });
    assert!(
        status.success(),
        "building {} failed: {status}",
        source.display()
    );
}

/// The C SDK's header says it serves C++ too: it must compile as C++.
fn check_header_in_cpp(workspace: &Path, out_dir: &Path) {
    let source = out_dir.join("header.cc");
    std::fs::write(
        &source,
        "#include \"runner_job.h\"\nint main() { void *state; size_t len; \
         return runner_checkpoint_load(&state, &len) + runner_should_stop(); }\n",
    )
    .expect("write header.cc");
    let status = Command::new("clang++")
        .args([
            "--target=wasm32-wasi",
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
        ])
        .arg(workspace.join("guest-sdk/c"))
        .arg(&source)
        .status()
        .expect("cannot run clang++");
    assert!(
        status.success(),
        "guest-sdk/c/runner_job.h does not compile as C++: {status}"
    );
}

fn check_target_installed(target: &str) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("cannot run rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout);
    assert!(
        Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(target)
            .is_dir(),
        "the {target} target is not installed for this toolchain: run `rustup target add {target}`"
    );
}
