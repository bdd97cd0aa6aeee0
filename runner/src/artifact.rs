//! Compiled jobs: the cache of compiled components and core modules, and the `.cwasm`
//! files of `runner compile`. Both hold the same record:
//!
//! ```text
//! artifact | SHA-256 of the job's .wasm (32 bytes) | SHA-256 of the artifact (32) | MAGIC (16)
//! ```
//!
//! where the artifact is wasmtime's serialized component or module (its ELF header says
//! which), an ELF file that wasmtime maps
//! from the record's file as it stands (the trailer after it is no part of the ELF), so
//! that loading a compiled job copies nothing. The first digest keeps a compiled job's
//! checkpoints those of its `.wasm`; the second catches a damaged file before wasmtime
//! maps it as code. Whether the artifact fits this runner's wasmtime version and engine
//! settings, wasmtime checks when it loads it. Version 1 of the record put the same
//! fields before the artifact, which wasmtime could then only load from a copy.
//!
//! The cache also remembers, under `ids/`, the SHA-256 of each `.wasm` it has seen by
//! the file's identity ([`FileId`]), so that a cached start does not read and hash the
//! whole `.wasm` (20 MB for a Python job) to find its entry:
//!
//! ```text
//! ID_MAGIC (16 bytes) | SHA-256 of the .wasm (32) | SHA-256 of ID_MAGIC, the identity and that digest (32)
//! ```
//!
//! The cache is bounded (`--cache-max`): a run that adds a file to it removes the files
//! used least recently (a run that uses one dates it now) beyond the bound, and the
//! temporary files of writers that crashed.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use crate::checkpoint::format::Digest;

/// The end of a compiled job; the last byte is the record's version.
const MAGIC: &[u8; 16] = b"runner-cwasm\0\0\0\x02";
const TRAILER: usize = 32 + 32 + MAGIC.len();

/// What starts a compiled job: wasmtime's artifact is an ELF file.
const ELF: &[u8; 4] = b"\x7fELF";

/// The start of a remembered digest (`ids/*.id`); the last byte is its version.
const ID_MAGIC: &[u8; 16] = b"runner-wasm-id\0\x01";
const ID_LEN: usize = ID_MAGIC.len() + 32 + 32;

/// How much of each end of a job file its identity includes.
const ID_SAMPLE: u64 = 64 * 1024;

/// How long ago a job file must have last changed for its identity to stand for its
/// contents: a file changed again within the file system's timestamp granularity
/// could keep its times (git's "racily clean" files), never one changed later.
const SETTLED: Duration = Duration::from_secs(2);

/// How old a temporary file in the cache must be to be a crashed writer's: writing the
/// largest entry takes seconds.
const ABANDONED: Duration = Duration::from_secs(3600);

/// Whether a file starting with `bytes` is a compiled job: of this version (an ELF
/// file, checked for the trailer when loaded) or of version 1 (which started with its
/// magic).
pub fn is_compiled(bytes: &[u8]) -> bool {
    bytes.starts_with(ELF) || bytes.starts_with(&MAGIC[..MAGIC.len() - 1])
}

/// A compiled job: a component, or a core module (a wasm32-wasip1 program).
#[derive(Clone)]
pub enum Compiled {
    /// A component: a job of the runner:job/job world, or a WASI 0.2 command.
    Component(Component),
    /// A core module: a WASI preview 1 program, a job if it imports `runner_job_v1`.
    Module(Module),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compiled::Component(_) => "Component",
            Compiled::Module(_) => "Module",
        })
    }
}

/// The record of `compiled`, compiled from a `.wasm` whose SHA-256 is `module`.
pub fn encode(module: &Digest, compiled: &Compiled) -> Result<Vec<u8>> {
    let mut record = match compiled {
        Compiled::Component(component) => component.serialize(),
        Compiled::Module(module) => module.serialize(),
    }
    .map_err(|error| anyhow!("cannot serialize the compiled job: {error:#}"))?;
    let artifact = Sha256::digest(&record);
    record.reserve_exact(TRAILER);
    record.extend_from_slice(module);
    record.extend_from_slice(&artifact);
    record.extend_from_slice(MAGIC);
    Ok(record)
}

/// Loads the record made by [`encode`] in `file`, at `path`: the compiled job, and the
/// digest of its `.wasm`. `Err` says what is wrong: damaged, another record version,
/// or compiled by a runner whose wasmtime or engine settings differ.
#[expect(
    unsafe_code,
    reason = "loading compiled code is unsafe in wasmtime; the one place the runner does it"
)]
pub fn load(engine: &Engine, file: &File, path: &Path) -> Result<(Compiled, Digest)> {
    let len = file.metadata().context("cannot read it")?.len();
    let mut head = [0; 16];
    let head_len = head.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    file.read_exact_at(&mut head[..head_len], 0)
        .context("cannot read it")?;
    let version_error = |version: u8| {
        anyhow!(
            "it is a compiled job of record version {version}, this runner reads version {}",
            MAGIC[MAGIC.len() - 1]
        )
    };
    if head[..head_len].starts_with(&MAGIC[..MAGIC.len() - 1]) && head_len == MAGIC.len() {
        return Err(version_error(head[MAGIC.len() - 1]));
    }
    let Some(artifact_len) = len
        .checked_sub(TRAILER as u64)
        .filter(|_| head.starts_with(ELF))
    else {
        bail!("it is truncated or not a compiled job");
    };
    let mut trailer = [0; TRAILER];
    file.read_exact_at(&mut trailer, artifact_len)
        .context("cannot read it")?;
    let (digests, magic) = trailer.split_at(64);
    if magic[..MAGIC.len() - 1] != MAGIC[..MAGIC.len() - 1] {
        bail!(
            "it is truncated or not a compiled job (an ELF file without the runner's trailer: \
             a program, or a file `wasmtime compile` wrote?)"
        );
    }
    if magic[MAGIC.len() - 1] != MAGIC[MAGIC.len() - 1] {
        return Err(version_error(magic[MAGIC.len() - 1]));
    }
    let mut checksum = Sha256::new();
    let mut chunk = vec![0; 1 << 20];
    let mut at = 0;
    while at < artifact_len {
        let want = chunk
            .len()
            .min(usize::try_from(artifact_len - at).unwrap_or(usize::MAX));
        file.read_exact_at(&mut chunk[..want], at)
            .context("cannot read it")?;
        checksum.update(&chunk[..want]);
        at += want as u64;
    }
    if checksum.finalize()[..] != digests[32..] {
        bail!("it is damaged (its checksum does not match)");
    }
    let module: Digest = digests[..32].try_into().expect("32 bytes");
    // The ELF header says whether it holds a component or a core module.
    let kind = Engine::detect_precompiled_file(path)
        .map_err(|error| anyhow!("cannot read its ELF header: {error:#}"))?
        .context("it is not a compiled job of wasmtime (its ELF header says otherwise)")?;
    // SAFETY: wasmtime maps the artifact as executable code, from the file at `path`, or
    // from a copy of it read from `file`. It is whole (the checksum above) and was
    // written by `encode`, from wasmtime's own serialization, by this or another runner;
    // wasmtime refuses one from another version or configuration. Records are only ever
    // replaced by a rename, never written in place, so the file at `path` is the one
    // checked, or another whole record of the same job. A compiled job is trusted as the
    // runner binary is: build it with `runner compile`.
    let compiled = match unsafe { deserialize_file(engine, kind, path) } {
        Ok(compiled) => compiled,
        // A file system mounted `noexec` (Docker's `--tmpfs` is) refuses to map code
        // from its files: load a copy instead. A record wasmtime refuses, it refuses
        // again here, saying why.
        Err(_) => {
            let mut artifact = vec![0; usize::try_from(artifact_len)?];
            file.read_exact_at(&mut artifact, 0)
                .context("cannot read it")?;
            unsafe { deserialize(engine, kind, &artifact) }.map_err(|error| anyhow!("{error:#}"))?
        }
    };
    Ok((compiled, module))
}

/// wasmtime's `deserialize_file` of the component or module at `path`.
///
/// # Safety
///
/// As wasmtime's: the file holds an artifact wasmtime serialized (see [`load`]).
#[expect(unsafe_code, reason = "see load")]
unsafe fn deserialize_file(
    engine: &Engine,
    kind: Precompiled,
    path: &Path,
) -> wasmtime::Result<Compiled> {
    // SAFETY: the caller's.
    Ok(match kind {
        Precompiled::Component => {
            Compiled::Component(unsafe { Component::deserialize_file(engine, path) }?)
        }
        Precompiled::Module => Compiled::Module(unsafe { Module::deserialize_file(engine, path) }?),
    })
}

/// wasmtime's `deserialize` of the component or module in `bytes`.
///
/// # Safety
///
/// As wasmtime's: `bytes` hold an artifact wasmtime serialized (see [`load`]).
#[expect(unsafe_code, reason = "see load")]
unsafe fn deserialize(
    engine: &Engine,
    kind: Precompiled,
    bytes: &[u8],
) -> wasmtime::Result<Compiled> {
    // SAFETY: the caller's.
    Ok(match kind {
        Precompiled::Component => {
            Compiled::Component(unsafe { Component::deserialize(engine, bytes) }?)
        }
        Precompiled::Module => Compiled::Module(unsafe { Module::deserialize(engine, bytes) }?),
    })
}

/// What identifies a job file's contents without reading them all: its device and
/// inode, its size, its modification and change times to the nanosecond, and its first
/// and last 64 KiB. The file cannot change without its change time moving (no call sets
/// it), so once that time is [`SETTLED`] in the past, the same identity means the same
/// bytes; the ends catch a copy of a file system whose files differ but kept their
/// times (a cloned disk changed at the block level).
#[derive(Debug, Clone)]
pub struct FileId {
    key: [u8; 32],
    settled: bool,
}

impl FileId {
    /// The identity of the open job file `file`.
    pub fn of(file: &File) -> std::io::Result<FileId> {
        let meta = file.metadata()?;
        let mut key = Sha256::new();
        key.update(ID_MAGIC);
        for field in [
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ] {
            key.update(field.to_le_bytes());
        }
        let size = meta.size();
        let head = size.min(ID_SAMPLE);
        let tail = size.saturating_sub(ID_SAMPLE).max(head);
        for (offset, len) in [(0, head), (tail, size - tail)] {
            let mut sample = vec![0; len as usize];
            file.read_exact_at(&mut sample, offset)?;
            key.update(&sample);
        }
        let changed = [
            (meta.mtime(), meta.mtime_nsec()),
            (meta.ctime(), meta.ctime_nsec()),
        ]
        .into_iter()
        .map(|(secs, nanos)| {
            u64::try_from(secs).map_or(UNIX_EPOCH, |secs| {
                UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos).unwrap_or(0))
            })
        })
        .max()
        .unwrap_or(UNIX_EPOCH);
        let settled = SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|since| since >= SETTLED);
        Ok(FileId {
            key: key.finalize().into(),
            settled,
        })
    }

    /// The remembered digest's record: [`ID_MAGIC`], `digest`, and a checksum binding
    /// both to this identity.
    fn record(&self, digest: &Digest) -> [u8; ID_LEN] {
        let mut record = [0; ID_LEN];
        record[..ID_MAGIC.len()].copy_from_slice(ID_MAGIC);
        record[ID_MAGIC.len()..ID_MAGIC.len() + 32].copy_from_slice(digest);
        let check = Sha256::new()
            .chain_update(&record[..ID_MAGIC.len() + 32])
            .chain_update(self.key)
            .finalize();
        record[ID_MAGIC.len() + 32..].copy_from_slice(&check);
        record
    }
}

/// The compiled-job cache: one record per job and engine, in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// The most it may hold, in bytes.
    max: u64,
}

impl Cache {
    /// The cache in `dir` (created when the first entry is written), holding at most
    /// `max` bytes.
    pub fn new(dir: PathBuf, max: u64) -> Self {
        Cache { dir, max }
    }

    /// Where the entry for the `.wasm` with SHA-256 `module` compiled by `engine` lives.
    /// The name covers all that makes an artifact incompatible: the job, and
    /// wasmtime's version and settings as wasmtime hashes them.
    fn entry(&self, engine: &Engine, module: &Digest) -> PathBuf {
        let mut key = ShaHasher(Sha256::new());
        module.hash(&mut key);
        engine.precompile_compatibility_hash().hash(&mut key);
        self.dir.join(format!(
            "{}.cwasm",
            crate::human::hex(&key.0.finalize()[..16])
        ))
    }

    /// The compiled job for `module`, if the cache holds a usable one. A damaged or
    /// incompatible entry is reported and ignored: the caller compiles and replaces it.
    pub fn get(&self, engine: &Engine, module: &Digest) -> Option<Compiled> {
        let path = self.entry(engine, module);
        let file = File::open(&path).ok()?;
        match load(engine, &file, &path) {
            Ok((compiled, digest)) if digest == *module => {
                used_now(&file);
                Some(compiled)
            }
            Ok(_) => {
                tracing::warn!(
                    "ignoring the cached compiled job `{}`: it is another job's; compiling again",
                    path.display()
                );
                None
            }
            Err(error) => {
                tracing::warn!(
                    "ignoring the cached compiled job `{}`: {error:#}; compiling again",
                    path.display()
                );
                None
            }
        }
    }

    /// Where the digest of the `.wasm` with identity `id` is remembered.
    fn id_entry(&self, id: &FileId) -> PathBuf {
        self.dir
            .join("ids")
            .join(format!("{}.id", crate::human::hex(&id.key[..16])))
    }

    /// The SHA-256 of the `.wasm` with identity `id`, if the cache remembers it. A
    /// damaged record is reported and ignored: the caller hashes the file.
    pub fn digest_of(&self, id: &FileId) -> Option<Digest> {
        let path = self.id_entry(id);
        let mut file = File::open(&path).ok()?;
        let mut record = Vec::with_capacity(ID_LEN);
        file.read_to_end(&mut record).ok()?;
        let digest: Digest = record
            .get(ID_MAGIC.len()..ID_MAGIC.len() + 32)?
            .try_into()
            .expect("32 bytes");
        if record[..] != id.record(&digest)[..] {
            tracing::warn!(
                "ignoring `{}` in the cache: it is damaged; reading the job file whole",
                path.display()
            );
            return None;
        }
        used_now(&file);
        Some(digest)
    }

    /// Remembers that the `.wasm` with identity `id` has SHA-256 `digest`, unless the
    /// file changed too recently for its identity to stand for its contents. As
    /// [`put`](Cache::put), a failure is reported and otherwise ignored. The entry this
    /// digest has with `engine`, if any, is kept when the cache makes room.
    pub fn remember(&self, engine: &Engine, id: &FileId, digest: &Digest) {
        if !id.settled {
            return;
        }
        let path = self.id_entry(id);
        match write_atomically(&path, &id.record(digest)) {
            Ok(()) => self.trim(&[&path, &self.entry(engine, digest)]),
            Err(error) => tracing::warn!(
                "cannot cache the job file's digest in `{}`: {error:#}",
                self.dir.display()
            ),
        }
    }

    /// Stores `compiled`, compiled from `module`. A cache that cannot be written is
    /// reported and otherwise ignored: the job runs all the same.
    pub fn put(&self, engine: &Engine, module: &Digest, compiled: &Compiled) {
        let path = self.entry(engine, module);
        match encode(module, compiled).and_then(|record| write_atomically(&path, &record)) {
            Ok(()) => self.trim(&[&path]),
            Err(error) => tracing::warn!(
                "cannot cache the compiled job in `{}`: {error:#}",
                self.dir.display()
            ),
        }
    }

    /// Keeps the cache within its bound after a write: removes the temporary files of
    /// writers that crashed, then the entries and remembered digests used least
    /// recently until the rest fit; never those in `keep` (what this run uses). Other
    /// runners may be using what it removes: they keep what they opened, and the next
    /// one to need it compiles it again.
    fn trim(&self, keep: &[&Path]) {
        let mut files = Vec::new();
        let mut total = 0;
        for dir in [self.dir.clone(), self.dir.join("ids")] {
            let Ok(listing) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in listing.flatten() {
                let path = entry.path();
                let Some(meta) = entry.metadata().ok().filter(fs::Metadata::is_file) else {
                    continue;
                };
                let used = meta.modified().unwrap_or(UNIX_EPOCH);
                let name = entry.file_name();
                if name.as_encoded_bytes().starts_with(b".tmp.") {
                    if used.elapsed().is_ok_and(|age| age > ABANDONED) {
                        remove(&path, "left half-written by a runner that stopped");
                    }
                } else if path
                    .extension()
                    .is_some_and(|ext| ext == "cwasm" || ext == "id")
                {
                    total += meta.len();
                    if !keep.contains(&path.as_path()) {
                        files.push((used, meta.len(), path));
                    }
                }
            }
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max {
                break;
            }
            if remove(&path, "used least recently, beyond --cache-max") {
                total -= len;
            }
        }
    }
}

/// Dates a cache file now, as the one used most recently. A file this user may not
/// change (a cache shared between users) keeps its date.
fn used_now(file: &File) {
    let _ = file.set_modified(SystemTime::now());
}

/// Removes a file from the cache, saying why; whether it is gone (another runner may
/// have removed it first).
fn remove(path: &Path, why: &str) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!("removed `{}` from the cache: {why}", path.display());
            true
        }
        Err(error) => error.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so that a reader
/// (another runner) sees the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let name = path.file_name().context("the path names no file")?;
    let temp = path.with_file_name(format!(
        ".tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = File::create(&temp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| fs::rename(&temp, path));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(anyhow!(error).context(format!("cannot write `{}`", path.display())));
    }
    Ok(())
}

/// A write that a stop may forbid: `runner compile` writes its output only if no stop
/// came first, and a stop that comes after the write knows it came too late.
#[derive(Debug, Default)]
pub struct WriteGate {
    state: std::sync::Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// A stop closed the gate: no write goes through any more.
    closed: bool,
    /// A write went through.
    written: bool,
}

impl WriteGate {
    /// Runs `write` unless the gate was closed; `None` if it was.
    pub fn write<T>(&self, write: impl FnOnce() -> Result<T>) -> Option<Result<T>> {
        let mut gate = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if gate.closed {
            return None;
        }
        let written = write();
        gate.written = written.is_ok();
        Some(written)
    }

    /// Closes the gate, waiting for a write under way; returns whether a write went
    /// through before.
    pub fn close(&self) -> bool {
        let mut gate = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        gate.closed = true;
        gate.written
    }
}

/// Feeds what is hashed into SHA-256, for a key that does not depend on std's hasher.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_remembered_for_a_settled_identity_only_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let job = dir.path().join("job.wasm");
        fs::write(&job, vec![7; 200_000]).expect("write");
        let cache = Cache::new(dir.path().join("cache"), u64::MAX);
        let engine = Engine::default();
        let digest = [1; 32];

        // Just written: it could change again without its times moving.
        let fresh = FileId::of(&File::open(&job).expect("open")).expect("identity");
        assert!(!fresh.settled);
        cache.remember(&engine, &fresh, &digest);
        assert_eq!(cache.digest_of(&fresh), None);
        assert!(!dir.path().join("cache").exists());

        let settled = FileId {
            settled: true,
            ..fresh.clone()
        };
        cache.remember(&engine, &settled, &digest);
        assert_eq!(cache.digest_of(&settled), Some(digest));

        // Another identity (the same file changed: its times and its last bytes) does
        // not find it.
        fs::write(&job, [vec![7; 199_999], vec![8]].concat()).expect("write");
        let changed = FileId::of(&File::open(&job).expect("open")).expect("identity");
        assert_ne!(changed.key, fresh.key);
        assert_eq!(
            cache.digest_of(&FileId {
                settled: true,
                ..changed
            }),
            None
        );

        // A record that does not check out is not trusted.
        let path = cache.id_entry(&settled);
        let mut record = fs::read(&path).expect("read");
        record[ID_MAGIC.len()] ^= 1;
        fs::write(&path, &record).expect("write");
        assert_eq!(cache.digest_of(&settled), None);
        fs::write(&path, &record[..40]).expect("write");
        assert_eq!(cache.digest_of(&settled), None);
    }

    #[test]
    fn a_small_file_s_identity_reads_it_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let job = dir.path().join("job.wasm");
        for len in [0, 1, 65_536, 65_537, 131_072, 131_073] {
            fs::write(&job, vec![3; len]).expect("write");
            let file = File::open(&job).expect("open");
            if let Err(error) = FileId::of(&file) {
                panic!("no identity for a file of {len} bytes: {error}");
            }
        }
    }
}
