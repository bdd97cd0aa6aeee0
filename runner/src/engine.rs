//! The wasmtime engine for one job, and loading the job's component into it.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use sha2::{Digest as _, Sha256};

use crate::checkpoint::format::Digest;
use crate::host::{self, JobPre, JobState};

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

/// A compiled, linked job and the SHA-256 of its file.
pub struct LoadedJob {
    /// Ready to instantiate.
    pub pre: JobPre<JobState>,
    /// SHA-256 of the job file, written into its checkpoints.
    pub digest: Digest,
}

impl std::fmt::Debug for LoadedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedJob")
            .field("digest", &crate::hex(&self.digest))
            .finish_non_exhaustive()
    }
}

/// Reads, compiles and links the job at `path`, checking that it is a component of the
/// `runner:job/job` world. Every error names the file and says what is wrong with it.
pub fn load_job(engine: &Engine, path: &Path) -> Result<LoadedJob> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read job `{shown}`"))?;
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => bail!(
            "job `{shown}` is a core WebAssembly module, not a component: build it for \
             wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
        ),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => {
            bail!("job `{shown}` is not a WebAssembly component (it does not start with `\\0asm`)")
        }
    }
    let component = Component::new(engine, &bytes)
        .map_err(|error| anyhow!("job `{shown}` is not a valid component: {error:#}"))?;
    check_world(engine, &component).with_context(|| format!("job `{shown}` cannot run"))?;

    let mut linker = Linker::new(engine);
    host::add_to_linker(&mut linker).map_err(|error| anyhow!(error))?;
    let instance_pre = linker.instantiate_pre(&component).map_err(|error| {
        anyhow!("job `{shown}` needs an import the runner does not provide: {error:#}")
    })?;
    let pre = JobPre::new(instance_pre).map_err(|error| {
        anyhow!("job `{shown}` does not match the runner:job/job world: {error:#}")
    })?;
    Ok(LoadedJob {
        pre,
        digest: Sha256::digest(&bytes).into(),
    })
}

/// A readable error for a component of another world, before the linker's generic one.
fn check_world(engine: &Engine, component: &Component) -> Result<()> {
    let ty = component.component_type();
    let mut exports = ty.exports(engine);
    if exports
        .any(|(name, item)| name == "run" && matches!(item.ty, ComponentItem::ComponentFunc(_)))
    {
        return Ok(());
    }
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    if names.iter().any(|name| name.starts_with("`wasi:cli/run@")) {
        bail!(
            "it is a WASI command (it exports wasi:cli/run), not a job of the runner:job/job \
             world, which exports `run`"
        );
    }
    bail!(
        "it does not export `run`, so it is not a job of the runner:job/job world (it exports {})",
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    )
}
