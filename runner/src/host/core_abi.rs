//! `runner_job_v1`: the runner's interfaces for core modules (wasm32-wasip1 programs),
//! as functions of `i32` and `i64` only, so that any toolchain can import them. What
//! each function does, its codes and who owns which memory are in `wit/runner_job_v1.md`;
//! this is that document's implementation, over the same hosts as the WIT interfaces.

use std::time::Duration;

use wasmtime::{Caller, Extern, Linker};

use super::JobState;
use super::bindings::runner::job::checkpoint::Error as CheckpointError;
use super::bindings::runner::job::lifecycle::StopReason as WitStopReason;
use super::bindings::runner::job::progress::Host as _;
use crate::checkpoint::MAX_STATE_LEN;

/// The import module's name. A core module that imports from it is a job.
pub const IMPORT_MODULE: &str = "runner_job_v1";

/// The call succeeded.
const OK: i32 = 0;
/// `checkpoint_save`: the state is larger than the runner accepts.
const TOO_LARGE: i32 = 1;
/// `checkpoint_save`: another runner has taken the job over; nothing was saved.
const FENCED: i32 = 2;
/// `checkpoint_save`: the store could not write the state, or make it durable.
const IO: i32 = 3;
/// `checkpoint_load`: the job has no checkpoint.
const NONE: i32 = 4;
/// A pointer and length outside the module's memory, a negative length, or a load
/// into a buffer whose length is not the checkpoint's.
const INVALID: i32 = 5;

/// What the ABI keeps between calls: the message of the last call that failed.
#[derive(Debug, Default)]
pub(super) struct CoreState {
    error: String,
}

/// Adds `runner_job_v1` to the core module `linker`.
pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "shutdown_requested",
        |caller: Caller<'_, JobState>| -> i32 { caller.data().lifecycle.requested().into() },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "shutdown_reason",
        |caller: Caller<'_, JobState>| -> i32 {
            match caller.data().lifecycle.reason() {
                None => 0,
                Some(WitStopReason::Terminate) => 1,
                Some(WitStopReason::Interrupt) => 2,
                Some(WitStopReason::Hangup) => 3,
                Some(WitStopReason::Timeout) => 4,
                Some(WitStopReason::Fenced) => 5,
            }
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "deadline",
        |caller: Caller<'_, JobState>| -> i64 {
            caller
                .data()
                .lifecycle
                .deadline()
                .map_or(-1, |nanos| i64::try_from(nanos).unwrap_or(i64::MAX))
        },
    )?;
    linker.func_wrap_async(
        IMPORT_MODULE,
        "wait_shutdown",
        |caller: Caller<'_, JobState>, (timeout,): (i64,)| {
            Box::new(async move {
                let wait = caller.data().lifecycle.wait();
                let requested = match u64::try_from(timeout) {
                    Err(_) => {
                        wait.await;
                        true
                    }
                    Ok(nanos) => tokio::time::timeout(Duration::from_nanos(nanos), wait)
                        .await
                        .is_ok(),
                };
                i32::from(requested)
            })
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "checkpoint_size",
        |caller: Caller<'_, JobState>| -> i64 {
            caller
                .data()
                .checkpoints
                .load()
                .map_or(-1, |state| state.len() as i64)
        },
    )?;
    linker.func_wrap(IMPORT_MODULE, "checkpoint_load", checkpoint_load)?;
    linker.func_wrap_async(
        IMPORT_MODULE,
        "checkpoint_save",
        |caller: Caller<'_, JobState>, (ptr, len): (i32, i32)| {
            Box::new(checkpoint_save(caller, ptr, len))
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "error_len",
        |caller: Caller<'_, JobState>| -> i32 {
            i32::try_from(caller.data().core.error.len()).unwrap_or(i32::MAX)
        },
    )?;
    linker.func_wrap(IMPORT_MODULE, "error_copy", error_copy)?;
    linker.func_wrap(
        IMPORT_MODULE,
        "progress",
        |mut caller: Caller<'_, JobState>, done: i64, total: i64| -> wasmtime::Result<()> {
            // Both are unsigned for the job; a total of -1 (all ones) is "unknown".
            let total = (total != -1).then_some(total as u64);
            caller.data_mut().progress.report(done as u64, total)
        },
    )?;
    Ok(())
}

/// `checkpoint_load(ptr, len)`: copies the last committed state into the `len` bytes at
/// `ptr`; `len` must be its size.
fn checkpoint_load(mut caller: Caller<'_, JobState>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    let memory = memory(&mut caller)?;
    let (memory, state) = memory.data_and_store_mut(&mut caller);
    let Some(committed) = state.checkpoints.load() else {
        return Ok(state.core.fail(NONE, "the job has no checkpoint".into()));
    };
    if usize::try_from(len) != Ok(committed.len()) {
        let message = format!(
            "checkpoint_load was given {len} bytes for a checkpoint of {} bytes",
            committed.len()
        );
        return Ok(state.core.fail(INVALID, message));
    }
    match region(memory.len(), ptr, len) {
        Ok(range) => {
            memory[range].copy_from_slice(committed);
            Ok(OK)
        }
        Err(message) => Ok(state.core.fail(INVALID, message)),
    }
}

/// `checkpoint_save(ptr, len)`: commits the `len` bytes at `ptr` as the job's state, as
/// `runner:job/checkpoint.save` does; returns once the commit is durable.
async fn checkpoint_save(
    mut caller: Caller<'_, JobState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let memory = memory(&mut caller)?;
    let range = match region(memory.data_size(&caller), ptr, len) {
        Ok(range) => range,
        Err(message) => return Ok(caller.data_mut().core.fail(INVALID, message)),
    };
    if range.len() as u64 > MAX_STATE_LEN {
        let message = format!(
            "the state is {} bytes; a checkpoint holds at most {MAX_STATE_LEN}",
            range.len()
        );
        return Ok(caller.data_mut().core.fail(TOO_LARGE, message));
    }
    let buffer = caller.data_mut().checkpoints.buffer(range.len());
    let started = caller
        .data()
        .checkpoints
        .start_save(&memory.data(&caller)[range], buffer);
    let saved = match started {
        Ok((record, commit)) => {
            let committed = commit.wait().await;
            caller.data_mut().finish_save(record, committed)
        }
        Err(error) => Err(error),
    };
    let core = &mut caller.data_mut().core;
    Ok(match saved {
        Ok(()) => OK,
        Err(CheckpointError::TooLarge(max)) => {
            core.fail(TOO_LARGE, format!("a checkpoint holds at most {max} bytes"))
        }
        Err(CheckpointError::Fenced) => core.fail(
            FENCED,
            "another runner has taken this job over: nothing was saved".into(),
        ),
        Err(CheckpointError::Io(message)) => core.fail(IO, message),
    })
}

/// `error_copy(ptr, len)`: copies the last failed call's message, or as much of it as
/// fits in `len` bytes, to `ptr`; returns how many bytes it copied, or -1 if the region
/// is outside the module's memory.
fn error_copy(mut caller: Caller<'_, JobState>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    let memory = memory(&mut caller)?;
    let (memory, state) = memory.data_and_store_mut(&mut caller);
    let message = state.core.error.as_bytes();
    let len = len.min(i32::try_from(message.len()).unwrap_or(i32::MAX));
    Ok(match region(memory.len(), ptr, len) {
        Ok(range) => {
            let copied = range.len();
            memory[range].copy_from_slice(&message[..copied]);
            copied as i32
        }
        Err(_) => -1,
    })
}

impl CoreState {
    /// Keeps `message` for `error_copy`, and returns `code`.
    fn fail(&mut self, code: i32, message: String) -> i32 {
        self.error = message;
        code
    }
}

/// The module's memory, `memory`, which `runner_job_v1`'s pointers point into (as
/// WASI preview 1's do).
fn memory(caller: &mut Caller<'_, JobState>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::Error::msg(format!(
            "the module calls {IMPORT_MODULE} with a pointer, but exports no memory named \
             `memory`"
        ))),
    }
}

/// The range of the `len` bytes at `ptr` in a memory of `size` bytes, or why there is
/// none.
fn region(size: usize, ptr: i32, len: i32) -> Result<std::ops::Range<usize>, String> {
    let (Ok(start), Ok(count)) = (usize::try_from(ptr as u32), usize::try_from(len)) else {
        return Err(format!("a negative length ({len})"));
    };
    match start.checked_add(count).filter(|end| *end <= size) {
        Some(end) => Ok(start..end),
        None => Err(format!(
            "{count} bytes at {start} are outside the module's memory of {size} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::region;

    #[test]
    fn a_region_is_inside_the_memory_or_refused() {
        assert_eq!(region(100, 10, 90), Ok(10..100));
        assert_eq!(region(100, 0, 0), Ok(0..0));
        assert_eq!(region(100, 100, 0), Ok(100..100));
        assert!(region(100, 10, 91).is_err());
        assert!(region(100, 0, -1).is_err());
        // A pointer is unsigned: -1 is the last byte of a 4 GiB memory.
        assert!(region(100, -1, 1).is_err());
        assert_eq!(region(1 << 32, -1, 1), Ok((1 << 32) - 1..1 << 32));
    }
}
