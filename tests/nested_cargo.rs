//! A cargo build nested in the outer one, for the test crates' build scripts
//! (`tests/guests`, `tests/static-runner`), which include this file with `#[path]`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a nested build runs.
pub struct Nested {
    /// The workspace root.
    pub workspace: PathBuf,
    /// The build script's OUT_DIR.
    pub out_dir: PathBuf,
    /// The nested build's target directory, in OUT_DIR.
    pub target_dir: PathBuf,
}

impl Nested {
    /// The build script's directories; it runs again when any of `watched` (paths in
    /// the workspace, `tests/nested_cargo.rs` included) changes.
    pub fn new(watched: &[&str]) -> Self {
        let manifest_dir = PathBuf::from(
            env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        );
        let workspace = manifest_dir
            .join("../..")
            .canonicalize()
            .expect("workspace root");
        for watched in watched.iter().chain(&["tests/nested_cargo.rs"]) {
            println!(
                "cargo:rerun-if-changed={}",
                workspace.join(watched).display()
            );
        }
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        Nested {
            target_dir: out_dir.join("target"),
            out_dir,
            workspace,
        }
    }
}

/// `cargo build --locked --target TARGET`, run in `workspace` into `target_dir` (the outer
/// build holds the lock on the workspace's target directory), without the outer build's
/// settings, which are for the host.
pub fn build(workspace: &Path, target: &str, target_dir: &Path) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--locked", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    command
}
