//! Builds the runner for x86_64-unknown-linux-musl, a static binary that runs in a
//! `FROM scratch` image, for the container tests, with a nested cargo (see
//! `tests/nested_cargo.rs`). The dev profile (its dependencies optimised, as the
//! workspace sets), without debug info and stripped: the image stays small and a change
//! to the runner rebuilds quickly. Release images are built by `deploy/build-image`.

use std::process::Command;

#[path = "../nested_cargo.rs"]
mod nested_cargo;

const TARGET: &str = "x86_64-unknown-linux-musl";

fn main() {
    let nested_cargo::Nested {
        workspace,
        out_dir,
        target_dir,
    } = nested_cargo::Nested::new(&["runner", "wit", "Cargo.lock", "Cargo.toml"]);

    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains(TARGET))
        .unwrap_or(true);
    assert!(
        installed,
        "the {TARGET} target is missing: run `sh tests/prerequisites.sh` (or `rustup target add {TARGET}`)"
    );
    let musl_gcc = Command::new("musl-gcc").arg("--version").output().is_ok();
    assert!(
        musl_gcc,
        "musl-gcc is missing (wasmtime compiles a C file): run `sh tests/prerequisites.sh` \
         (or `apt-get install musl-tools`)"
    );

    let mut command = nested_cargo::build(&workspace, TARGET, &target_dir);
    command
        .args(["-p", "runner", "--bin", "runner"])
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_PROFILE_DEV_STRIP", "true");
    let status = command
        .status()
        .expect("cannot run cargo to build the static runner");
    assert!(
        status.success(),
        "building the static runner failed: {status}"
    );

    let runner = target_dir.join(TARGET).join("debug/runner");
    assert!(
        runner.is_file(),
        "the build did not produce {}",
        runner.display()
    );
    std::fs::write(
        out_dir.join("static_runner.rs"),
        format!(
            "/// The static runner, built from source for this test build.\npub const RUNNER: &str = {:?};\n",
            runner.display().to_string()
        ),
    )
    .expect("write static_runner.rs");
}
