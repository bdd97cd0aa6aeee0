//! Compiled jobs: the cache that spares later runs the compile, and `runner compile`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use test_guests::{COMMAND, PRIMES, TESTJOB};

use crate::util::{Finished, Running, SIGTERM, Sandbox, bare_runner, run, wait_until};

/// The end of a compiled job, version 2 (see runner/src/artifact.rs): after the artifact,
/// the SHA-256 of the `.wasm`, the SHA-256 of the artifact, and this.
const MAGIC: &[u8; 16] = b"runner-cwasm\0\0\0\x02";
const TRAILER: usize = 32 + 32 + 16;

/// The files directly in `dir` with extension `ext`, and nothing else may be there but
/// `also` (a temporary file left behind would be).
fn files(dir: &Path, ext: &str, also: Option<&str>) -> Vec<PathBuf> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let all: Vec<PathBuf> = listing
        .map(|entry| entry.expect("entry").path())
        .filter(|path| also.is_none_or(|also| !path.ends_with(also)))
        .collect();
    assert!(
        all.iter()
            .all(|path| path.extension().is_some_and(|found| found == ext)),
        "a temporary file was left behind: {all:?}"
    );
    all
}

/// The cache's entries (files named `*.cwasm`); besides them only `ids/`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    files(dir, "cwasm", Some("ids"))
}

/// The job files' digests the cache remembers (`ids/*.id`).
fn ids(dir: &Path) -> Vec<PathBuf> {
    files(&dir.join("ids"), "id", None)
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
            "it is truncated or not a compiled job (an ELF file without the runner's \
             trailer: a program, or a file `wasmtime compile` wrote?)",
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

/// Wasmtime maps a compiled job from its file; a file system mounted `noexec` (as
/// Docker's `--tmpfs` is by default) refuses that, and the runner loads a copy instead of
/// compiling the job again.
#[test]
fn a_cache_on_a_noexec_file_system_is_loaded_all_the_same() {
    let sandbox = Sandbox::new();
    let cache = sandbox.cache_dir();
    fs::create_dir_all(&cache).expect("cache dir");
    let script = r#"
        set -e
        mount -t tmpfs -o noexec tmpfs "$CACHE"
        for id in p1 p2; do
            "$RUNNER" --state-dir "$STATE" --cache-dir "$CACHE" --job-id $id "$PRIMES" 1000
        done
        ls "$CACHE"
    "#;
    let done = run(std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("CACHE", &cache)
        .env("STATE", sandbox.state_dir())
        .env("RUNNER", env!("CARGO_BIN_EXE_runner"))
        .env("PRIMES", PRIMES));
    done.assert_code(0);
    assert_eq!(
        done.stdout.matches("primes below 1000: 168\n").count(),
        2,
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains(".cwasm"), "{}", done.stdout);
    // The first run compiled it (and said nothing about it); the second loaded it.
    assert!(!done.stderr.contains("ignoring"), "{}", done.stderr);
    assert!(!done.stderr.contains("compil"), "{}", done.stderr);
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

/// `primes` with a custom section of `padding` zero bytes appended: the same job, in a
/// file large enough to tell reading its ends from reading it whole.
fn padded_primes(padding: usize) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"runner-test-padding";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.resize(body.len() + padding, 0);
    let mut bytes = fs::read(PRIMES).expect("read primes");
    bytes.push(0);
    leb128(body.len(), &mut bytes);
    bytes.extend_from_slice(&body);
    bytes
}

/// Runs `primes` from `job` as job `id` under strace: how many bytes of `job` the runner
/// read, and the record the job's completion left.
fn bytes_read_running(sandbox: &Sandbox, job: &Path, id: &str) -> (u64, [u8; 32]) {
    let trace = sandbox.path().join(format!("{id}.strace"));
    let runner = sandbox.runner();
    let mut command = std::process::Command::new("strace");
    command
        .args(["-f", "-qq", "-e", "trace=read,pread64", "-P"])
        .arg(job)
        .arg("-o")
        .arg(&trace)
        .arg(runner.get_program())
        .args(runner.get_args())
        .args(["--job-id", id])
        .arg(job)
        .arg("1000");
    for (name, value) in runner.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let done = run(&mut command);
    done.assert_code(0);
    assert_eq!(done.stdout, "primes below 1000: 168\n");
    let read = fs::read_to_string(&trace)
        .expect("strace's output")
        .lines()
        .filter_map(|line| line.rsplit_once(" = ")?.1.parse::<u64>().ok())
        .sum();
    let record = sandbox.checkpoint(id).expect("the completion's record");
    (read, record.module_digest)
}

#[test]
fn a_cached_start_knows_the_job_file_by_its_identity_and_a_changed_file_is_read_again() {
    let sandbox = Sandbox::new();
    let job = sandbox.path().join("job.wasm");
    let bytes = padded_primes(4 << 20);
    fs::write(&job, &bytes).expect("write the job");
    let size = bytes.len() as u64;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();

    // Its first run reads it whole, hashes it, compiles it.
    let (read, recorded) = bytes_read_running(&sandbox, &job, "p1");
    assert!(read >= size, "read {read} of {size} bytes");
    assert_eq!(recorded, digest);
    assert_eq!(entries(&sandbox.cache_dir()).len(), 1);

    // Once it has not changed for 2 s (its times could survive a change within their
    // granularity, not a later one), a run remembers its digest by its identity.
    let modified = fs::metadata(&job).expect("stat").modified().expect("mtime");
    let settle = || {
        wait_until("the job file to settle", || {
            let meta = fs::metadata(&job).expect("stat");
            let changed = std::time::UNIX_EPOCH
                + std::time::Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
            (changed.elapsed().unwrap_or_default() > std::time::Duration::from_millis(2100))
                .then_some(())
        })
    };
    settle();
    let (_, recorded) = bytes_read_running(&sandbox, &job, "p2");
    assert_eq!(recorded, digest);
    assert_eq!(ids(&sandbox.cache_dir()).len(), 1);

    // Known by its identity: its ends read, not the rest.
    let (read, recorded) = bytes_read_running(&sandbox, &job, "p3");
    assert!(read < 256 * 1024, "read {read} of {size} bytes");
    assert_eq!(recorded, digest);

    // Changed in place, to the same size, with its modification time put back: its
    // change time moved, so it is read whole and its checkpoints name the new bytes.
    let mut changed_bytes = bytes.clone();
    let middle = changed_bytes.len() - (2 << 20);
    changed_bytes[middle] = 1;
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(&job).expect("open");
        file.write_all_at(&[1], middle as u64).expect("write");
        file.set_modified(modified).expect("put the mtime back");
    }
    let (read, recorded) = bytes_read_running(&sandbox, &job, "p4");
    assert!(read >= size, "read {read} of {size} bytes");
    assert_eq!(recorded, <[u8; 32]>::from(Sha256::digest(&changed_bytes)));

    // A damaged record of a digest is not trusted: the file is read whole again.
    settle();
    bytes_read_running(&sandbox, &job, "p5");
    let remembered = ids(&sandbox.cache_dir());
    assert_eq!(remembered.len(), 2, "{remembered:?}");
    for id in &remembered {
        let mut record = fs::read(id).expect("read");
        record[20] ^= 1;
        fs::write(id, record).expect("damage");
    }
    let (read, recorded) = bytes_read_running(&sandbox, &job, "p6");
    assert!(read >= size, "read {read} of {size} bytes");
    assert_eq!(recorded, <[u8; 32]>::from(Sha256::digest(&changed_bytes)));
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
    let wasm = &whole[whole.len() - TRAILER..whole.len() - TRAILER + 32];
    let mut foreign = b"\x7fELF not an artifact of this runner's wasmtime".to_vec();
    let artifact = Sha256::digest(&foreign);
    foreign.extend_from_slice(wasm);
    foreign.extend_from_slice(&artifact);
    foreign.extend_from_slice(MAGIC);

    let mut newer = whole.clone();
    let last = newer.len() - 1;
    newer[last] = 3;
    let mut older = b"runner-cwasm\0\0\0\x01".to_vec();
    older.extend_from_slice(&whole);
    let mut flipped = whole.clone();
    flipped[last - TRAILER - 100] ^= 1;

    for (bytes, said) in [
        (foreign, "is a compiled job this runner cannot load: "),
        (
            newer,
            "it is a compiled job of record version 3, this runner reads version 2",
        ),
        (
            older,
            "it is a compiled job of record version 1, this runner reads version 2",
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

/// The bytes `entries` and the remembered digests in `cache` take.
fn cache_size_listed(entries: &[PathBuf], cache: &Path) -> u64 {
    entries
        .iter()
        .chain(&ids(cache))
        .map(|path| fs::metadata(path).expect("a cache file").len())
        .sum()
}

/// The bytes the cache's entries and remembered digests take.
fn cache_size(dir: &Path) -> u64 {
    cache_size_listed(&entries(dir), dir)
}

#[test]
fn the_cache_keeps_within_its_bound_dropping_what_was_used_least_recently() {
    let jobs: [(&str, &[&str]); 3] = [(PRIMES, &["1000"]), (TESTJOB, &["show"]), (COMMAND, &[])];
    let sandbox = Sandbox::new();
    let cache = sandbox.cache_dir();
    let mut runs = 0;
    // The entries, whatever else is there (the temporary files made below).
    let listed = |cache: &Path| -> Vec<PathBuf> {
        let listing = fs::read_dir(cache).expect("the cache");
        let paths = listing.map(|entry| entry.expect("entry").path());
        paths
            .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
            .filter(|path| !path.to_string_lossy().contains("/.tmp."))
            .collect()
    };
    let mut run_job = |job: usize, max: &str| {
        runs += 1;
        let (wasm, args) = jobs[job];
        let before = if cache.exists() {
            listed(&cache)
        } else {
            Vec::new()
        };
        run(sandbox
            .runner()
            .args(["--cache-max", max, "--job-id", &format!("run-{runs}"), wasm])
            .args(args))
        .assert_code(0);
        listed(&cache)
            .into_iter()
            .find(|entry| !before.contains(entry))
    };

    // Each job's entry, and what it takes.
    let entry: Vec<PathBuf> = (0..3)
        .map(|job| run_job(job, "1GiB").expect("a new entry"))
        .collect();
    let size = |job: usize| fs::metadata(&entry[job]).expect("entry").len();
    let sizes: Vec<u64> = (0..3).map(size).collect();
    let digests = ids(&cache).len();
    assert_eq!(digests, 3);
    // Room for two entries and every digest.
    let room = |a: usize, b: usize| (sizes[a] + sizes[b] + 4096).to_string();

    // Job 0 used again (a cache hit dates its entry now), then job 2's entry removed by
    // hand: job 2 compiles again and has to make room, and job 1's is the least recent.
    assert_eq!(run_job(0, "1GiB"), None);
    fs::remove_file(&entry[2]).expect("remove");
    assert_eq!(run_job(2, &room(0, 2)), Some(entry[2].clone()));
    let mut kept = entries(&cache);
    kept.sort();
    let mut expected = vec![entry[0].clone(), entry[2].clone()];
    expected.sort();
    assert_eq!(
        kept, expected,
        "job 1's entry, the least recently used, goes"
    );
    assert!(cache_size(&cache) <= sizes[0] + sizes[2] + 4096);

    // A writer that crashed an hour ago left a temporary file; one writing now has one.
    let crashed = cache.join(".tmp.crashed.cwasm.1");
    let writing = cache.join(".tmp.writing.cwasm.2");
    for (path, age) in [(&crashed, 7200), (&writing, 0)] {
        let file = fs::File::create(path).expect("create");
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
        file.set_modified(then).expect("date it");
    }
    // Job 1 compiles again: job 0's entry is now the least recently used.
    assert_eq!(run_job(1, &room(1, 2)), Some(entry[1].clone()));
    assert!(
        !entry[0].exists(),
        "job 0's entry, the least recently used, goes"
    );
    assert!(entry[1].exists() && entry[2].exists());
    assert!(cache_size_listed(&listed(&cache), &cache) <= sizes[1] + sizes[2] + 4096);
    assert!(!crashed.exists(), "the crashed writer's file is removed");
    assert!(writing.exists(), "a file being written is left alone");
    fs::remove_file(&writing).expect("remove");

    // A bound smaller than one entry keeps the entry the run added, and nothing else.
    assert_eq!(run_job(0, "1"), Some(entry[0].clone()));
    assert_eq!(entries(&cache), vec![entry[0].clone()]);
    assert!(ids(&cache).is_empty(), "{:?}", ids(&cache));
}
