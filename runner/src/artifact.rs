//! Compiled jobs: the cache of compiled components, and the `.cwasm` files of
//! `runner compile`. Both hold the same record:
//!
//! ```text
//! MAGIC (16 bytes) | SHA-256 of the job's .wasm (32) | SHA-256 of the artifact (32) | artifact
//! ```
//!
//! where the artifact is wasmtime's serialized component. The first digest keeps a
//! compiled job's checkpoints those of its `.wasm`; the second catches a damaged file
//! before wasmtime maps it as code. Whether the artifact fits this runner's wasmtime
//! version and engine settings, wasmtime checks when it loads it.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::checkpoint::format::Digest;

/// The start of a compiled job; the last byte is the record's version.
const MAGIC: &[u8; 16] = b"runner-cwasm\0\0\0\x01";
const HEADER: usize = MAGIC.len() + 32 + 32;

/// Whether `bytes` are a compiled job (of any version of the record).
pub fn is_compiled(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC[..MAGIC.len() - 1])
}

/// The record of `component`, compiled from a `.wasm` whose SHA-256 is `module`.
pub fn encode(module: &Digest, component: &Component) -> Result<Vec<u8>> {
    let artifact = component
        .serialize()
        .map_err(|error| anyhow!("cannot serialize the compiled job: {error:#}"))?;
    let mut record = Vec::with_capacity(HEADER + artifact.len());
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(module);
    record.extend_from_slice(&Sha256::digest(&artifact));
    record.extend_from_slice(&artifact);
    Ok(record)
}

/// Loads a record made by [`encode`]: the component, and the digest of its `.wasm`.
/// `Err` says what is wrong: damaged, another record version, or compiled by a runner
/// whose wasmtime or engine settings differ.
#[expect(
    unsafe_code,
    reason = "loading compiled code is unsafe in wasmtime; the one place the runner does it"
)]
pub fn decode(engine: &Engine, record: &[u8]) -> Result<(Component, Digest)> {
    if record.len() < HEADER || !is_compiled(record) {
        bail!("it is truncated or not a compiled job");
    }
    if record[..MAGIC.len()] != MAGIC[..] {
        bail!(
            "it is a compiled job of record version {}, this runner reads version {}",
            record[MAGIC.len() - 1],
            MAGIC[MAGIC.len() - 1]
        );
    }
    let module: Digest = record[MAGIC.len()..MAGIC.len() + 32]
        .try_into()
        .expect("32 bytes");
    let artifact = &record[HEADER..];
    if Sha256::digest(artifact)[..] != record[MAGIC.len() + 32..HEADER] {
        bail!("it is damaged (its checksum does not match)");
    }
    // SAFETY: wasmtime maps the artifact as executable code. It is whole (the checksum
    // above) and was written by `encode`, from wasmtime's own serialization, by this or
    // another runner; wasmtime refuses one from another version or configuration. A
    // compiled job is trusted as the runner binary is: build it with `runner compile`.
    let component = unsafe { Component::deserialize(engine, artifact) }
        .map_err(|error| anyhow!("{error:#}"))?;
    Ok((component, module))
}

/// The compiled-job cache: one record per job and engine, in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created when the first entry is written).
    pub fn new(dir: PathBuf) -> Self {
        Cache { dir }
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
    pub fn get(&self, engine: &Engine, module: &Digest) -> Option<Component> {
        let path = self.entry(engine, module);
        let record = fs::read(&path).ok()?;
        match decode(engine, &record) {
            Ok((component, digest)) if digest == *module => Some(component),
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

    /// Stores `component`, compiled from `module`. A cache that cannot be written is
    /// reported and otherwise ignored: the job runs all the same.
    pub fn put(&self, engine: &Engine, module: &Digest, component: &Component) {
        let path = self.entry(engine, module);
        if let Err(error) =
            encode(module, component).and_then(|record| write_atomically(&path, &record))
        {
            tracing::warn!(
                "cannot cache the compiled job in `{}`: {error:#}",
                self.dir.display()
            );
        }
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
    let written = fs::File::create(&temp)
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
