//! The host side of the `runner:job` world: one module per WIT interface, the generated
//! bindings kept private, [`JobState`], the data of the job's store, and the job's WASI
//! context; and `runner_job_v1`, the same interfaces for core modules ([`core_abi`]).

mod checkpoint;
mod core_abi;
mod lifecycle;
mod progress;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use wasmtime::StoreContextMut;
use wasmtime::component::{HasSelf, Linker, WasmList};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use checkpoint::Checkpoints;
pub use core_abi::IMPORT_MODULE as CORE_IMPORT_MODULE;
pub use lifecycle::{Lifecycle, RunnerClock};
pub use progress::Progress;

use crate::checkpoint::format::Digest;
use crate::checkpoint::output::OutputDir;
use crate::checkpoint::{MAX_STATE_LEN, Record, Store, StoreError};
use crate::log;
use crate::memory::Limiter;
use crate::net::{self, AllowList, HttpHooks, Rule};
use crate::shutdown::Shutdown;
use crate::summary::RunStatus;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "runner:job/job",
        // `runner:job/checkpoint` is linked by hand (`add_checkpoint_to_linker`).
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
        },
    });
}

pub use bindings::JobPre;
/// How a job's `run` ended when it returned.
pub use bindings::Outcome as JobOutcome;
use bindings::runner::job::checkpoint::Error as CheckpointError;

/// Where and what a job saves.
#[derive(Debug)]
pub struct Saves {
    /// The store the job owns.
    pub store: Arc<dyn Store>,
    /// The transactional output directory, if any.
    pub output: Option<OutputDir>,
    /// SHA-256 of the job's module, written into its records.
    pub module_digest: Digest,
    /// The last committed record.
    pub committed: Option<Record>,
}

/// The data of a job's store.
pub struct JobState {
    /// WASI, with its resource table: WASI 0.2's view of it for a component, preview
    /// 1's for a core module.
    wasi: WasiP1Ctx,
    lifecycle: Lifecycle,
    checkpoints: Checkpoints,
    progress: Progress,
    /// What `runner_job_v1` keeps between calls.
    core: core_abi::CoreState,
    /// The job's memory limit.
    limiter: Limiter,
    /// What the job's sockets may reach.
    allowed_net: Arc<AllowList>,
    /// `wasi:http`, its requests checked against the same list.
    http: WasiHttpCtx,
    http_hooks: HttpHooks,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("checkpoints", &self.checkpoints)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl JobState {
    /// The state of a job that sees `wasi` (built by [`wasi_context`] with a
    /// [`RunnerClock`] started at `clock_zero`), is stopped through `shutdown`, and notes
    /// its checkpoints and progress in `status`.
    pub fn new(
        (wasi, allowed_net): (WasiP1Ctx, Arc<AllowList>),
        clock_zero: Instant,
        shutdown: Arc<Shutdown>,
        status: Arc<RunStatus>,
        saves: Saves,
        limiter: Limiter,
    ) -> anyhow::Result<Self> {
        let mut state = JobState {
            wasi,
            lifecycle: Lifecycle::new(Arc::clone(&shutdown), clock_zero),
            checkpoints: Checkpoints::new(
                saves.store,
                saves.output,
                saves.module_digest,
                shutdown,
                saves.committed,
                Arc::clone(&status),
            ),
            progress: Progress::new(status),
            core: core_abi::CoreState::default(),
            limiter,
            http: WasiHttpCtx::new(),
            http_hooks: HttpHooks::new(Arc::clone(&allowed_net)),
            allowed_net,
        };
        state.limiter.hold(state.checkpoints.held());
        Ok(state)
    }

    /// The end of a save ([`Checkpoints::finish_save`]); the runner's copies of the
    /// job's states count against its memory limit.
    fn finish_save(
        &mut self,
        record: Record,
        committed: Result<(), StoreError>,
    ) -> Result<(), CheckpointError> {
        let saved = self.checkpoints.finish_save(record, committed);
        self.limiter.hold(self.checkpoints.held());
        saved
    }

    /// Records that the job completed ([`Checkpoints::complete`]).
    pub async fn complete(&mut self) -> Option<u64> {
        self.checkpoints.complete().await
    }

    /// What the job's sockets may reach.
    pub fn allowed_net(&self) -> &Arc<AllowList> {
        &self.allowed_net
    }

    /// The limiter of the job's memory, for its store.
    pub fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }

    /// If the job's memory limit refused it memory, a line that says so.
    pub fn memory_refusal(&self) -> Option<String> {
        self.limiter.refusal()
    }

    /// The job's latest progress report, as text.
    pub fn progress(&self) -> Option<String> {
        self.progress.latest()
    }

    /// The job's latest progress report, if no line has shown it yet.
    pub fn unshown_progress(&self) -> Option<String> {
        self.progress.unshown()
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl WasiHttpView for JobState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http_hooks,
            table: self.wasi.ctx().table,
            ctx: &mut self.http,
        }
    }
}

/// Adds WASI 0.2 (async) and the runner's interfaces to the component `linker`.
pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    net::add_lookup_to_linker(linker)?;
    // For jobs and commands that import it: requests go where --allow-net says.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    use bindings::runner::job;
    job::lifecycle::add_to_linker::<_, lifecycle::LifecycleData>(linker, |state| {
        lifecycle::LifecycleView {
            lifecycle: &state.lifecycle,
            table: state.wasi.ctx().table,
        }
    })?;
    add_checkpoint_to_linker(linker)?;
    job::progress::add_to_linker::<_, HasSelf<Progress>>(linker, |state| &mut state.progress)?;
    Ok(())
}

/// Adds WASI preview 1 (async) and `runner_job_v1` to the core module `linker`.
pub fn add_to_core_linker(linker: &mut wasmtime::Linker<JobState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |state: &mut JobState| &mut state.wasi)?;
    core_abi::add_to_linker(linker)
}

/// `runner:job/checkpoint`, by hand rather than through the bindings: `save` takes the
/// state as a view of the job's memory ([`WasmList`]), which the bindings would copy
/// into a new `Vec` first; the commit writes it from there, and [`Checkpoints`] copies
/// it into the buffer it keeps for it.
/// The only import that does I/O. Async, for a bucket's commit, which goes on as a task
/// of the runtime (a forced stop leaves it behind); a state directory's runs on the
/// job's thread (see [`Store::commit`](crate::checkpoint::Store::commit)).
fn add_checkpoint_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    let mut checkpoint = linker.instance("runner:job/checkpoint@0.1.0")?;
    checkpoint.func_wrap("load", |store: StoreContextMut<'_, JobState>, (): ()| {
        Ok((store.data().checkpoints.load().map(<[u8]>::to_vec),))
    })?;
    checkpoint.func_wrap_async(
        "save",
        |mut store: StoreContextMut<'_, JobState>, (state,): (WasmList<u8>,)| {
            Box::new(async move {
                let len = state.len();
                if len as u64 > MAX_STATE_LEN {
                    return Ok((Err(CheckpointError::TooLarge(MAX_STATE_LEN)),));
                }
                let buffer = store.data_mut().checkpoints.buffer(len);
                let started = store
                    .data()
                    .checkpoints
                    .start_save(state.as_le_slice(&store), buffer);
                let (record, commit) = match started {
                    Ok(started) => started,
                    Err(error) => return Ok((Err(error),)),
                };
                let committed = commit.wait().await;
                Ok((store.data_mut().finish_save(record, committed),))
            })
        },
    )
}

/// A `--dir` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirMapping {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the job sees it.
    pub guest: String,
}

/// The job's WASI context: its arguments, environment and directories, the network
/// `allow_net` grants (nothing else of the host), the runner's stdio, and a monotonic
/// clock that starts at `clock_zero`; and the allow-list its sockets answer to.
/// For a component and a core module alike: a [`WasiP1Ctx`] is WASI 0.2's context too.
pub fn wasi_context<'a>(
    args: &[String],
    env: &[(String, String)],
    dirs: impl IntoIterator<Item = &'a DirMapping>,
    allow_net: &[Rule],
    clock_zero: Instant,
) -> anyhow::Result<(WasiP1Ctx, Arc<AllowList>)> {
    let mut wasi = WasiCtxBuilder::new();
    let allowed_net = Arc::new(AllowList::new(allow_net.to_vec()));
    net::grant(&mut wasi, &allowed_net);
    wasi.inherit_stdio();
    // With JSON logs, the job's lines become objects; output to the terminal the
    // progress bar is drawn on goes around the bar.
    if log::json() {
        wasi.stdout(log::JobOutput::Stdout);
        wasi.stderr(log::JobOutput::Stderr);
    } else if log::bar_allowed() {
        wasi.stderr(log::JobOutput::Stderr);
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            wasi.stdout(log::JobOutput::Stdout);
        }
    }
    wasi.args(args)
        .envs(env)
        .monotonic_clock(RunnerClock::new(clock_zero));
    for dir in dirs {
        wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite)
            .map_err(|error| anyhow!(error))
            .with_context(|| format!("cannot open --dir `{}`", dir.host.display()))?;
    }
    Ok((wasi.build_p1(), allowed_net))
}
