//! `sequence.wasm N`: appends the lines `1` to `N`, one number per line, to `out.txt` in
//! its output directory (`runner --output DIR`), about 3 ms a line, and checkpoints every
//! 100 lines. However often it is stopped or killed and run again, `out.txt` ends up
//! holding each number once, in order: the runner cuts the file back to the length the
//! last checkpoint recorded before the job resumes from that checkpoint.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use guest_sdk::anyhow::{Context, anyhow, bail};
use guest_sdk::{Ctx, Outcome, Result};

const PACE: Duration = Duration::from_millis(3);
const LINES_PER_CHECKPOINT: u64 = 100;

#[derive(Default, guest_sdk::serde::Serialize, guest_sdk::serde::Deserialize)]
#[serde(crate = "guest_sdk::serde")]
struct State {
    target: u64,
    written: u64,
}

fn run(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let arg = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow!("usage: sequence.wasm N"))?;
    let target: u64 = arg
        .parse()
        .map_err(|_| anyhow!("N `{arg}` is not a whole number"))?;
    let dir = std::env::var("RUNNER_OUTPUT_DIR")
        .context("no output directory: run the job with `runner --output DIR`")?;
    if ctx.resumed() && ctx.state.target != target {
        bail!(
            "the checkpoint writes 1 to {}, not {target}: use another --job-id",
            ctx.state.target
        );
    }
    ctx.state.target = target;
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&dir).join("out.txt"))
        .context("cannot open out.txt")?;
    // Paced against the clock, not line by line, so that the overhead of each line does
    // not add up: 3000 lines take about 10 seconds.
    let (start, first) = (Instant::now(), ctx.state.written);
    while ctx.state.written < target {
        if ctx.should_stop() {
            return ctx.suspend();
        }
        let line = ctx.state.written + 1;
        // One write per line, unbuffered: what a checkpoint records is on the file.
        out.write_all(format!("{line}\n").as_bytes())?;
        ctx.state.written = line;
        if line.is_multiple_of(LINES_PER_CHECKPOINT) {
            ctx.checkpoint()?;
        }
        ctx.progress(line, Some(target));
        let due = start + PACE * u32::try_from(line - first).unwrap_or(u32::MAX);
        guest_sdk::sleep(due.saturating_duration_since(Instant::now()));
    }
    ctx.checkpoint()?;
    Ok(Outcome::Completed)
}

guest_sdk::job!(run);
