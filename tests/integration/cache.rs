//! Compiled jobs: the cache that spares later runs the compile, and `runner compile`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use test_guests::PRIMES;

use crate::util::{Finished, Running, SIGTERM, Sandbox, bare_runner, run};

/// The start of a compiled job, version 1 (see runner/src/artifact.rs).
const MAGIC: &[u8; 16] = b"runner-cwasm\0\0\0\x01";

/// The cache's entries (files named `*.cwasm`), and nothing else may be there.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let all: Vec<PathBuf> = listing.map(|entry| entry.expect("entry").path()).collect();
    assert!(
        all.iter()
            .all(|path| path.extension().is_some_and(|ext| ext == "cwasm")),
        "a temporary file was left behind: {all:?}"
    );
    all
}

fn primes(sandbox: &Sandbox) -> Finished {
    let done = run(sandbox.runner().args(["--job-id", "p", PRIMES, "1000"]));
    done.assert_code(0);
    assert_eq!(done.stdout, "primes below 1000: 168\n");
    done
}

#[test]
fn the_first_run_caches_the_compiled_job_and_later_runs_load_it() {
    let sandbox = Sandbox::new();
    primes(&sandbox);
    let cached = entries(&sandbox.cache_dir());
    assert_eq!(cached.len(), 1, "{cached:?}");
    let inode = fs::metadata(&cached[0]).expect("entry").ino();

    // A hit reads the entry and writes nothing: the same file, nothing said.
    fs::remove_dir_all(sandbox.job_dir("p")).expect("remove the state");
    let again = primes(&sandbox);
    assert!(!again.stderr.contains("cache"), "{}", again.stderr);
    assert_eq!(entries(&sandbox.cache_dir()), cached);
    assert_eq!(fs::metadata(&cached[0]).expect("entry").ino(), inode);

    // --no-cache neither reads nor writes it.
    let other = Sandbox::new();
    let uncached = run(other
        .runner()
        .args(["--no-cache", "--job-id", "p", PRIMES, "1000"]));
    uncached.assert_code(0);
    assert!(entries(&other.cache_dir()).is_empty());
}

#[test]
fn a_damaged_cache_entry_is_ignored_and_replaced() {
    let sandbox = Sandbox::new();
    primes(&sandbox);
    let entry = entries(&sandbox.cache_dir()).remove(0);
    let whole = fs::read(&entry).expect("entry");

    let mut flipped = whole.clone();
    let last = flipped.len() - 100;
    flipped[last] ^= 0x40;
    for (damage, said) in [
        (flipped, "it is damaged (its checksum does not match)"),
        (
            whole[..whole.len() / 2].to_vec(),
            "it is damaged (its checksum does not match)",
        ),
        (
            whole[..40].to_vec(),
            "it is truncated or not a compiled job",
        ),
        (b"garbage".to_vec(), "it is truncated or not a compiled job"),
    ] {
        fs::write(&entry, damage).expect("damage the entry");
        fs::remove_dir_all(sandbox.job_dir("p")).expect("remove the state");
        let done = primes(&sandbox);
        done.assert_stderr(&format!(
            "ignoring the cached compiled job `{}`: {said}; compiling again",
            entry.display()
        ));
        assert_eq!(fs::read(&entry).expect("entry"), whole, "not replaced");
    }
}

#[test]
fn an_unusable_cache_directory_does_not_stop_the_job() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.cache_dir(), "a file where the cache should be").expect("write");
    let done = primes(&sandbox);
    done.assert_stderr(&format!(
        "cannot cache the compiled job in `{}`",
        sandbox.cache_dir().display()
    ));
}

#[test]
fn runners_sharing_a_cache_at_once_all_run() {
    let sandbox = Sandbox::new();
    let runs: Vec<_> = (0..4)
        .map(|id| {
            Running::start(
                sandbox
                    .runner()
                    .args(["--job-id", &format!("p{id}"), PRIMES, "1000"]),
                Stdio::null(),
            )
        })
        .collect();
    for running in runs {
        let done = running.wait();
        done.assert_code(0);
        assert_eq!(done.stdout, "primes below 1000: 168\n");
    }
    assert_eq!(entries(&sandbox.cache_dir()).len(), 1);
}

#[test]
fn a_compiled_job_runs_without_compiling_and_keeps_the_wasm_s_checkpoints() {
    let sandbox = Sandbox::new();
    let compiled = sandbox.path().join("primes.cwasm");
    let done = run(bare_runner().args(["compile", PRIMES, "-o"]).arg(&compiled));
    done.assert_code(0);
    done.assert_stderr(&format!("to `{}` (", compiled.display()));

    // Its job id is the file's stem, and its checkpoints name the .wasm it came from,
    // so that the .wasm resumes them as its own.
    let mut running = Running::start(
        sandbox
            .runner()
            .arg("--no-cache")
            .arg(&compiled)
            .arg("30000000"),
        Stdio::null(),
    );
    let record = sandbox.wait_for_checkpoint_after(&mut running, "primes", 0);
    let wasm: [u8; 32] = Sha256::digest(fs::read(PRIMES).expect("read")).into();
    assert_eq!(record.module_digest, wasm);
    running.signal(SIGTERM);
    running.wait().assert_code(75);

    let resumed = run(sandbox.runner().args([PRIMES, "30000000"]));
    resumed.assert_code(0);
    resumed.assert_stderr("resuming job `primes` from checkpoint");
    assert!(
        !resumed.stderr.contains("another module"),
        "{}",
        resumed.stderr
    );
    assert_eq!(resumed.stdout, "primes below 30000000: 1857859\n");
}

#[test]
fn a_compiled_job_this_runner_cannot_load_exits_2_saying_why() {
    let sandbox = Sandbox::new();
    let compiled = sandbox.path().join("primes.cwasm");
    run(bare_runner().args(["compile", PRIMES, "-o"]).arg(&compiled)).assert_code(0);
    let whole = fs::read(&compiled).expect("read");

    // Wasmtime's own refusal: a whole record whose artifact another build would have
    // made differently (here: not an artifact at all).
    let artifact = b"\x7fELF not an artifact of this runner's wasmtime".to_vec();
    let mut foreign = MAGIC.to_vec();
    foreign.extend_from_slice(&whole[16..48]);
    foreign.extend_from_slice(&Sha256::digest(&artifact));
    foreign.extend_from_slice(&artifact);

    let mut newer = whole.clone();
    newer[15] = 2;
    let mut flipped = whole.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;

    for (bytes, said) in [
        (foreign, "is a compiled job this runner cannot load: "),
        (
            newer,
            "it is a compiled job of record version 2, this runner reads version 1",
        ),
        (flipped, "it is damaged (its checksum does not match)"),
    ] {
        fs::write(&compiled, bytes).expect("write");
        let refused = run(sandbox.runner().arg(&compiled).arg("1000"));
        refused.assert_code(2);
        refused.assert_stderr(said);
        refused
            .assert_stderr("compile it again from its .wasm with this runner (`runner compile`)");
    }
    assert!(sandbox.checkpoint("primes").is_none(), "a refused job ran");
}

#[test]
fn compile_refuses_what_is_not_a_job() {
    let sandbox = Sandbox::new();
    let not_a_job = sandbox.path().join("notes.txt");
    fs::write(&not_a_job, "hello").expect("write");
    let output = sandbox.path().join("out.cwasm");
    let refused = run(bare_runner()
        .arg("compile")
        .arg(&not_a_job)
        .arg("-o")
        .arg(&output));
    refused.assert_code(2);
    refused.assert_stderr("is not a WebAssembly component");
    assert!(!output.exists());
}
