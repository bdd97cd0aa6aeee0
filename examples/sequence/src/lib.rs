//! `sequence.wasm N`: appends the lines `1` to `N`, one number per line, to `out.txt` in
//! its output directory (`runner --output DIR`), about 3 ms a line, and checkpoints every
//! 100 lines; its place, the next line to write, is the checkpoint's `batches[0]`.
//! However often it is stopped or killed and run again, `out.txt` ends up holding each
//! number once, in order: it writes through `ctx.output`, a buffer the SDK flushes
//! before every save, so each checkpoint records the lines written before it, and the
//! runner cuts the file back to that length before the job resumes from it.

use std::io::Write;
use std::time::{Duration, Instant};

use guest_sdk::anyhow::{anyhow, bail};
use guest_sdk::{Ctx, Outcome, Result};
use serde::{Deserialize, Serialize};

const PACE: Duration = Duration::from_millis(3);
const LINES_PER_CHECKPOINT: u64 = 100;

#[derive(Default, Serialize, Deserialize)]
struct State {
    target: u64,
}

#[guest_sdk::job]
fn sequence(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let arg = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow!("usage: sequence.wasm N"))?;
    let target: u64 = arg
        .parse()
        .map_err(|_| anyhow!("N `{arg}` is not a whole number"))?;
    if ctx.resumed() && ctx.state().target != target {
        bail!(
            "the checkpoint writes 1 to {}, not {target}: use another --job-id",
            ctx.state().target
        );
    }
    ctx.state().target = target;
    // Buffered, and flushed by the SDK before every save the batch makes.
    let mut out = ctx.output("out.txt")?;
    // Paced against the clock from the first line of this run, not line by line, so
    // that the overhead of each line does not add up: 3000 lines take about 10 seconds.
    let mut pace: Option<(Instant, u64)> = None;
    for line in ctx.batch(1..=target).save_every_items(LINES_PER_CHECKPOINT) {
        let line = line?;
        writeln!(out, "{line}")?;
        let (start, first) = *pace.get_or_insert((Instant::now(), line));
        let due = start + PACE * u32::try_from(line + 1 - first).unwrap_or(u32::MAX);
        guest_sdk::sleep(due.saturating_duration_since(Instant::now()));
    }
    // The lines written since the last save are flushed, and the runner records them
    // with the job's completion.
    Ok(Outcome::Completed)
}
