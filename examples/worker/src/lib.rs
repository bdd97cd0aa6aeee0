//! `worker.wasm QUEUE [--drain]`: the queue-worker pattern, over a directory of message
//! files (give it with `runner --dir HOST::/queue worker.wasm /queue`).
//!
//! Producers put each message into `QUEUE/inbox/` whole (written elsewhere, then
//! renamed in). The worker claims the oldest by renaming it into `QUEUE/work/ID/` (ID is
//! `$WORKER_ID`, `0` if unset: give each worker sharing the queue its own, with
//! `runner --env WORKER_ID=...`), handles it (here: its text in upper case), writes the
//! result to `QUEUE/done/` (through a temporary file and a rename, so a result is whole
//! or absent), and removes the claim. A message it finds in its own `work/ID/` when it
//! starts was claimed by a run of it that was killed: it handles it again, which writes
//! the same result.
//!
//! When the runner asks it to stop, it finishes the message it holds and returns
//! `Suspended` (the runner exits 75): stopped before the work was done, run it again.
//! Waiting for messages, it wakes the moment the request comes. It keeps no state: a
//! stateless worker's suspend saves nothing. With `--drain` it returns `Completed` once
//! the inbox is empty (a Kubernetes Job that empties a queue); without, it waits for
//! more messages until it is stopped (a Deployment).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_sdk::anyhow::{Context, anyhow};
use guest_sdk::{Ctx, Outcome, Result};

/// How often an empty inbox is looked at again.
const LOOK_EVERY: Duration = Duration::from_millis(100);

#[guest_sdk::job]
fn worker(ctx: &mut Ctx) -> Result<Outcome> {
    let mut args = std::env::args().skip(1);
    let queue = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow!("usage: worker.wasm QUEUE [--drain]"))?,
    );
    let drain = args.next().as_deref() == Some("--drain");
    let id = std::env::var("WORKER_ID").unwrap_or_else(|_| "0".to_owned());
    let [inbox, work, done] = ["inbox", "work", "done"].map(|name| queue.join(name));
    let work = work.join(id);
    for dir in [&inbox, &work, &done] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Claimed by a run that was killed before it finished them.
    for name in names(&work)? {
        handle(&work, &done, &name)?;
    }
    loop {
        if ctx.should_stop() {
            return ctx.suspend();
        }
        let Some(name) = names(&inbox)?.into_iter().next() else {
            if drain {
                return Ok(Outcome::Completed);
            }
            // Woken at once by a stop request, however long the inbox stays empty.
            let inbox = &inbox;
            if !guest_sdk::wait_until(
                || names(inbox).is_ok_and(|names| !names.is_empty()),
                LOOK_EVERY,
            ) {
                return ctx.suspend();
            }
            continue;
        };
        // The claim: a rename, which only one worker of a shared queue wins.
        match fs::rename(inbox.join(&name), work.join(&name)) {
            Ok(()) => handle(&work, &done, &name)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).context(format!("cannot claim message {name}")),
        }
    }
}

/// The messages in `dir`, oldest name first (producers name them in order).
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Handles the claimed message `name`: its result goes to `done`, whole, and then the
/// claim goes. It runs to its end even when a stop is requested meanwhile: the grace
/// period is there for it.
fn handle(work: &Path, done: &Path, name: &str) -> Result<()> {
    let claimed = work.join(name);
    let text =
        fs::read_to_string(&claimed).with_context(|| format!("cannot read message {name}"))?;
    // The work itself: a stand-in that takes a moment.
    std::thread::sleep(Duration::from_millis(200));
    let temporary = work.join(format!(".{name}.result"));
    fs::write(&temporary, text.to_uppercase())
        .and_then(|()| fs::rename(&temporary, done.join(name)))
        .with_context(|| format!("cannot write the result of {name}"))?;
    fs::remove_file(&claimed).with_context(|| format!("cannot remove the claim on {name}"))?;
    println!("handled {name}");
    Ok(())
}
