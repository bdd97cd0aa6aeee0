//! A Rust wasm32-wasip1 job through the runner's core-module ABI (`runner_job_v1`,
//! `wit/runner_job_v1.md`), with its imports declared by hand as any toolchain would:
//! `core-job.wasm MODE [ARG]`.

#[cfg(target_arch = "wasm32")]
mod common;
#[cfg(target_arch = "wasm32")]
#[path = "job_wasip1.rs"]
mod wasip1;

#[cfg(target_arch = "wasm32")]
fn main() {
    wasip1::main();
}

/// Elsewhere (the workspace's host build) there is nothing to link the imports to.
#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("core-job is a wasm32-wasip1 program: build it with --target wasm32-wasip1");
    std::process::exit(2);
}
