//! `benchjob.wasm commit SIZE COUNT`: commits a SIZE-byte state COUNT times through the
//! runner and prints how long each commit took, as the job sees it (from the call to its
//! return, the copy into the runner included): `commit_ns N N ...`.

use std::time::Instant;

use guest_sdk::anyhow::{Context, bail};
use guest_sdk::{Ctx, Outcome, Result};

#[guest_sdk::job]
fn run(_ctx: &mut Ctx<()>) -> Result<Outcome> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, size, count] = args.as_slice() else {
        bail!("usage: benchjob.wasm commit SIZE COUNT");
    };
    if mode != "commit" {
        bail!("unknown mode `{mode}`: the only one is `commit`");
    }
    let size: usize = size.parse().context("SIZE")?;
    let count: usize = count.parse().context("COUNT")?;
    let mut state: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut samples = Vec::with_capacity(count);
    for round in 0..count {
        // A different state each time, as a job's would be.
        if let Some(first) = state.first_mut() {
            *first = round as u8;
        }
        let start = Instant::now();
        guest_sdk::save_bytes(&state)?;
        samples.push(start.elapsed().as_nanos().to_string());
    }
    println!("commit_ns {}", samples.join(" "));
    Ok(Outcome::Completed)
}
