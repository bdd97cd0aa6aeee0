//! `primes.wasm [LIMIT]`: counts the primes below LIMIT by trial division, a
//! deliberately CPU-bound job. It saves its place about once a second, and when stopped
//! and run again it resumes and prints the same line an uninterrupted run prints:
//! `primes below LIMIT: COUNT`.

use std::time::Duration;

use guest_sdk::anyhow::{Context, bail};
use guest_sdk::{Ctx, Outcome, Result};
use serde::{Deserialize, Serialize};

use crate::count::is_prime;

mod count;

/// About 20 seconds on a 2-core machine of 2026.
const DEFAULT_LIMIT: u64 = 70_000_000;

#[derive(Default, Serialize, Deserialize)]
struct State {
    limit: u64,
    count: u64,
}

#[guest_sdk::job]
fn primes(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let limit = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("LIMIT `{arg}` is not a whole number"))?,
        None => DEFAULT_LIMIT,
    };
    if ctx.resumed() && ctx.state().limit != limit {
        bail!(
            "the checkpoint counts primes below {}, not {limit}: use another --job-id",
            ctx.state().limit
        );
    }
    ctx.state().limit = limit;
    for n in ctx.batch(0..limit).save_every(Duration::from_secs(1)) {
        if is_prime(n?) {
            ctx.state().count += 1;
        }
    }
    println!("primes below {limit}: {}", ctx.state().count);
    Ok(Outcome::Completed)
}
