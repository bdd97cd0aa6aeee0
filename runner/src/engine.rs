//! The wasmtime engine for one job: its configuration, arming the forced stop's epoch,
//! loading the job (a component, or a core module: a wasm32-wasip1 program) into it,
//! and calling the job.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ExternType, InstancePre, Module};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

use sha2::{Digest as _, Sha256};

use crate::artifact::{self, Cache, Compiled, FileId, WriteGate};
use crate::checkpoint::MAX_RECORD_LEN;
use crate::checkpoint::format::Digest;
use crate::host::{self, JobOutcome, JobPre, JobState};
use crate::outcome::Outcome;
use crate::shutdown::Shutdown;

/// A new engine for one job.
///
/// Epoch interruption is how a forced stop reaches a job that is computing; an epoch
/// bump stops every store on the engine, hence one engine per job.
pub fn new_engine() -> Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    Engine::new(&config).map_err(|error| anyhow!(error).context("cannot create the engine"))
}

/// The engine of a run, attached to `shutdown`: a forced stop bumps its epoch once
/// ([`Shutdown::attach_engine`]), which traps a job computing in a store made by
/// [`new_store`].
pub fn for_run(shutdown: &Shutdown) -> Result<Engine> {
    let engine = new_engine()?;
    shutdown.attach_engine(&engine);
    Ok(engine)
}

/// The job's store, armed for a forced stop: its epoch deadline is one tick past the
/// engine's current epoch, so that the single bump of a forced stop traps the job at its
/// next epoch check.
///
/// Its host calls may take in up to [`MAX_RECORD_LEN`] bytes (wasmtime's default is 128
/// MiB, and counts a list the host only views, as `save` does): a save of up to
/// [`MAX_STATE_LEN`](crate::checkpoint::MAX_STATE_LEN) bytes reaches the store, and a
/// larger one up to that bound gets `too-large`.
///
/// Its memories and tables grow only as far as the job's [`Limiter`](crate::memory::Limiter)
/// allows.
pub fn new_store(engine: &Engine, data: JobState) -> wasmtime::Store<JobState> {
    let mut store = wasmtime::Store::new(engine, data);
    store.limiter(|state| state.limiter());
    store.set_hostcall_fuel(usize::try_from(MAX_RECORD_LEN).unwrap_or(usize::MAX));
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    store
}

/// What the runner calls in a job.
pub enum Entry {
    /// `run` of the runner:job/job world: the job sees stop requests and checkpoints.
    Job(JobPre<JobState>),
    /// `wasi:cli/run` of a plain WASI command, which cannot see a stop request: it gets
    /// the grace period, then the forced stop.
    Command(CommandPre<JobState>),
    /// `_start` of a core module, a WASI preview 1 program: a job if it imports
    /// `runner_job_v1` (it sees stop requests and checkpoints, and suspends by exiting
    /// 75), else a plain command as above.
    Module {
        /// The module, linked.
        pre: InstancePre<JobState>,
        /// Whether it imports `runner_job_v1`.
        job: bool,
    },
}

/// The exit code with which a core module job says that it suspended.
const SUSPENDED: i32 = 75;

/// A compiled, linked job and the SHA-256 of its file.
pub struct LoadedJob {
    /// Ready to instantiate.
    pub entry: Entry,
    /// SHA-256 of the job file, written into its checkpoints.
    pub digest: Digest,
}

impl Entry {
    /// Instantiates the job in `store` and calls it: its outcome if it returns, the
    /// error (an exit, a trap) if it does not. A job's completion is recorded in its
    /// store before this returns (a command's is not: it runs again on every run).
    pub async fn call(&self, store: &mut wasmtime::Store<JobState>) -> wasmtime::Result<Outcome> {
        Ok(match self {
            Entry::Job(pre) => {
                let instance = pre.instantiate_async(&mut *store).await?;
                match instance.call_run(&mut *store).await? {
                    Ok(JobOutcome::Completed) => completed(store).await,
                    Ok(JobOutcome::Suspended) => Outcome::Suspended,
                    Err(message) => Outcome::JobFailed(message),
                }
            }
            // As `wasmtime run`: an `Err` from a command exits 1, with nothing to say.
            Entry::Command(pre) => {
                let command = pre.instantiate_async(&mut *store).await?;
                match command.wasi_cli_run().call_run(&mut *store).await? {
                    Ok(()) => Outcome::Completed,
                    Err(()) => Outcome::Exited(1),
                }
            }
            // As `wasmtime run`: `_start` returning is exit 0, `proc_exit(n)` exit n.
            Entry::Module { pre, job } => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                let exit = match start.call_async(&mut *store, ()).await {
                    Ok(()) => 0,
                    Err(error) => match error.downcast_ref::<I32Exit>() {
                        Some(exit) if *job => exit.0,
                        _ => return Err(error),
                    },
                };
                match exit {
                    0 if *job => completed(store).await,
                    0 => Outcome::Completed,
                    SUSPENDED => Outcome::Suspended,
                    code => Outcome::Exited(code),
                }
            }
        })
    }
}

/// Records that the job completed, so that a later run does not run it again.
async fn completed(store: &mut wasmtime::Store<JobState>) -> Outcome {
    if store.data_mut().complete().await.is_none() {
        tracing::warn!(
            "the job completed, but its completion is not recorded: a run of it resumes \
             from its last checkpoint"
        );
    }
    Outcome::Completed
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entry::Job(_) => "Job",
            Entry::Command(_) => "Command",
            Entry::Module { job: true, .. } => "ModuleJob",
            Entry::Module { job: false, .. } => "Module",
        })
    }
}

impl std::fmt::Debug for LoadedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedJob")
            .field("entry", &self.entry)
            .field("digest", &crate::human::hex(&self.digest))
            .finish_non_exhaustive()
    }
}

/// Reads, compiles (or takes from `cache`) and links the job at `path`, checking that
/// it is a component of the `runner:job/job` world, a WASI command, or a WASI preview 1
/// program. Every error names the file and says what is wrong with it.
pub fn load_job(engine: &Engine, path: &Path, cache: Option<&Cache>) -> Result<LoadedJob> {
    let (compiled, digest) = compile_job(engine, path, cache)?;
    link(engine, path, &compiled, digest)
}

/// Links the job at `path`, compiled to `compiled`, to the runner's imports.
fn link(engine: &Engine, path: &Path, compiled: &Compiled, digest: Digest) -> Result<LoadedJob> {
    let entry = match compiled {
        Compiled::Component(component) => link_component(engine, path, component)?,
        Compiled::Module(module) => link_module(engine, path, module)?,
    };
    Ok(LoadedJob { entry, digest })
}

/// Links the component of the job at `path`.
fn link_component(engine: &Engine, path: &Path, component: &Component) -> Result<Entry> {
    let shown = path.display();
    let command =
        is_command(engine, component).with_context(|| format!("job `{shown}` cannot run"))?;

    let mut linker = Linker::new(engine);
    host::add_to_linker(&mut linker).map_err(|error| anyhow!(error))?;
    let instance_pre = linker.instantiate_pre(component).map_err(|error| {
        anyhow!("job `{shown}` needs an import the runner does not provide: {error:#}")
    })?;
    Ok(if command {
        Entry::Command(CommandPre::new(instance_pre).map_err(|error| {
            anyhow!("job `{shown}` does not match the wasi:cli/command world: {error:#}")
        })?)
    } else {
        Entry::Job(JobPre::new(instance_pre).map_err(|error| {
            anyhow!("job `{shown}` does not match the runner:job/job world: {error:#}")
        })?)
    })
}

/// Links the core module of the job at `path`: a WASI preview 1 program, which may
/// import `runner_job_v1`.
fn link_module(engine: &Engine, path: &Path, module: &Module) -> Result<Entry> {
    let shown = path.display();
    match module.get_export("_start") {
        Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
        Some(_) => bail!(
            "job `{shown}` cannot run: its `_start` export is not a function without \
             parameters and results"
        ),
        None => bail!(
            "job `{shown}` cannot run: it is a core module without a `_start` function (a \
             WASI program's entry point; a library or reactor module is no program)"
        ),
    }
    let job = module
        .imports()
        .any(|import| import.module() == host::CORE_IMPORT_MODULE);
    if job && !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        bail!(
            "job `{shown}` cannot run: it imports {} but exports no memory named `memory`, \
             which its pointers point into",
            host::CORE_IMPORT_MODULE
        );
    }
    let mut linker = wasmtime::Linker::new(engine);
    host::add_to_core_linker(&mut linker).map_err(|error| anyhow!(error))?;
    let pre = linker.instantiate_pre(module).map_err(|error| {
        anyhow!(
            "job `{shown}` needs an import the runner does not provide: {}; a core module \
             may import wasi_snapshot_preview1 and {} (wit/runner_job_v1.md)",
            module_import_error(&format!("{error:#}")),
            host::CORE_IMPORT_MODULE
        )
    })?;
    Ok(Entry::Module { pre, job })
}

/// wasmtime's error for a core module's import, said from the module's side: its
/// "expected" type is the module's import, its "found" type what the runner provides.
fn module_import_error(message: &str) -> String {
    let types = message
        .split_once(": types incompatible: expected type `")
        .and_then(|(head, rest)| {
            let (imported, rest) = rest.split_once("`, found type `")?;
            let (provided, _) = rest.split_once('`')?;
            Some((head, imported, provided))
        });
    match types {
        Some((head, imported, provided)) => format!(
            "{}: the module imports it as `{imported}`, the runner provides `{provided}`",
            head.replace("incompatible import type for", "a wrong type for")
        ),
        None => message.to_owned(),
    }
}

/// `runner compile JOB -o OUTPUT`: compiles the job at `job`, checks that the runner can
/// run it, and writes it to `output` as a compiled job that `runner OUTPUT` loads
/// without compiling; through `gate`, so that a stop stops the write. `None` if the gate
/// was closed before the write.
pub fn compile_to_file(job: &Path, output: &Path, gate: &WriteGate) -> Option<Result<usize>> {
    let compiled = new_engine().and_then(|engine| {
        let (compiled, digest) = compile_job(&engine, job, None)?;
        link(&engine, job, &compiled, digest)?;
        artifact::encode(&digest, &compiled)
    });
    let record = match compiled {
        Ok(record) => record,
        Err(error) => return Some(Err(error)),
    };
    gate.write(|| artifact::write_atomically(output, &record).map(|()| record.len()))
}

/// The job at `path` compiled, and the SHA-256 of its `.wasm`: loaded from a compiled
/// job (`runner compile`), from `cache`, or compiled now (and then cached). A cache that
/// remembers the file's identity spares reading it whole.
fn compile_job(engine: &Engine, path: &Path, cache: Option<&Cache>) -> Result<(Compiled, Digest)> {
    let shown = path.display();
    let cannot_read = || format!("cannot read job `{shown}`");
    let mut file = File::open(path).with_context(cannot_read)?;
    let mut head = Vec::with_capacity(16);
    (&file)
        .take(16)
        .read_to_end(&mut head)
        .with_context(cannot_read)?;
    let kind = check_header(path, &head)?;
    let compiled = kind == JobFile::Compiled;
    let known = match cache {
        Some(cache) if !compiled => FileId::of(&file)
            .ok()
            .map(|id| (cache, cache.digest_of(&id), id)),
        _ => None,
    };
    if let Some((cache, Some(digest), _)) = &known
        && let Some(component) = cache.get(engine, digest)
    {
        return Ok((component, *digest));
    }
    if compiled {
        return artifact::load(engine, &file, path).map_err(|error| {
            anyhow!(
                "job `{shown}` is a compiled job this runner cannot load: {error:#}; compile \
                 it again from its .wasm with this runner (`runner compile`)"
            )
        });
    }
    let mut bytes = head;
    file.read_to_end(&mut bytes).with_context(cannot_read)?;
    let digest: Digest = Sha256::digest(&bytes).into();
    if let Some((cache, remembered, id)) = &known {
        if *remembered != Some(digest) {
            cache.remember(engine, id, &digest);
            // Not looked up above under this digest.
            if let Some(component) = cache.get(engine, &digest) {
                return Ok((component, digest));
            }
        }
    } else if let Some(component) = cache.and_then(|cache| cache.get(engine, &digest)) {
        return Ok((component, digest));
    }
    let compiled = if kind == JobFile::Module {
        Compiled::Module(
            Module::new(engine, &bytes)
                .map_err(|error| anyhow!("job `{shown}` is not a valid core module: {error:#}"))?,
        )
    } else {
        Compiled::Component(
            Component::new(engine, &bytes)
                .map_err(|error| anyhow!("job `{shown}` is not a valid component: {error:#}"))?,
        )
    };
    if let Some(cache) = cache {
        cache.put(engine, &digest, &compiled);
    }
    Ok((compiled, digest))
}

/// Refuses a job file that cannot be a job (missing, unreadable, not a component, a
/// core module nor a compiled job) from its first bytes: cheap, so that a run checks it before it touches
/// the job's state.
pub fn check_job_file(path: &Path) -> Result<()> {
    let mut head = Vec::with_capacity(16);
    File::open(path)
        .and_then(|file| file.take(16).read_to_end(&mut head))
        .with_context(|| format!("cannot read job `{}`", path.display()))?;
    check_header(path, &head).map(drop)
}

/// What a job file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobFile {
    /// A compiled job (`runner compile`).
    Compiled,
    /// A component.
    Component,
    /// A core module.
    Module,
}

/// Checks the start of the job file at `path`: what it is, or an error naming the file
/// for anything else.
fn check_header(path: &Path, bytes: &[u8]) -> Result<JobFile> {
    let shown = path.display();
    if artifact::is_compiled(bytes) {
        return Ok(JobFile::Compiled);
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(JobFile::Module),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(JobFile::Component),
        _ => bail!(
            "job `{shown}` is not a WebAssembly component or module (it does not start with \
             `\\0asm`)"
        ),
    }
}

/// Whether `component` is a WASI command (it exports `wasi:cli/run`) rather than a job
/// (it exports `run`); a readable error for any other component, before the linker's
/// generic one.
fn is_command(engine: &Engine, component: &Component) -> Result<bool> {
    let ty = component.component_type();
    let mut exports = ty.exports(engine);
    if exports
        .any(|(name, item)| name == "run" && matches!(item.ty, ComponentItem::ComponentFunc(_)))
    {
        return Ok(false);
    }
    if ty.exports(engine).any(|(name, item)| {
        name.starts_with("wasi:cli/run@0.2.")
            && matches!(item.ty, ComponentItem::ComponentInstance(_))
    }) {
        return Ok(true);
    }
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    bail!(
        "it exports neither `run` (a job of the runner:job/job world) nor wasi:cli/run@0.2 \
         (a WASI command): it exports {}",
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::module_import_error;

    #[test]
    fn a_wrong_import_type_is_said_from_the_modules_side() {
        assert_eq!(
            module_import_error(
                "incompatible import type for `runner_job_v1::checkpoint_save`: types \
                 incompatible: expected type `(func (param i64) (result i64))`, found type \
                 `(func (param i32 i32) (result i32))`"
            ),
            "a wrong type for `runner_job_v1::checkpoint_save`: the module imports it as \
             `(func (param i64) (result i64))`, the runner provides `(func (param i32 i32) \
             (result i32))`"
        );
        let unknown = "unknown import: `env::f` has not been defined";
        assert_eq!(module_import_error(unknown), unknown);
    }
}
