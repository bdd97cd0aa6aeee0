//! `primes.wasm [LIMIT [SHARDS]]`: counts the primes below LIMIT by trial division, a
//! deliberately CPU-bound job. It saves its place about once a second, and when stopped
//! and run again it resumes and prints the same line an uninterrupted run prints:
//! `primes below LIMIT: COUNT`.
//!
//! With SHARDS, the job is one of SHARDS shards, numbered from 0 by
//! $JOB_COMPLETION_INDEX (Kubernetes sets it in an Indexed Job; pass it to the job with
//! `--env JOB_COMPLETION_INDEX`): shard I counts the primes in
//! [LIMIT*I/SHARDS, LIMIT*(I+1)/SHARDS) and prints
//! `primes below LIMIT in shard I of SHARDS: COUNT`. The shards' counts add up to the
//! whole count.

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
    /// (index, shards); `None`: the whole range.
    #[serde(default)]
    shard: Option<(u64, u64)>,
    count: u64,
}

/// A whole number argument or variable, or an error that names it.
fn number(what: &str, text: &str) -> Result<u64> {
    text.parse()
        .with_context(|| format!("{what} `{text}` is not a whole number"))
}

#[guest_sdk::job]
fn primes(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let ctx_resumed = ctx.resumed();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let limit = match args.first() {
        Some(arg) => number("LIMIT", arg)?,
        None => DEFAULT_LIMIT,
    };
    let shard = match args.get(1) {
        None => None,
        Some(arg) => {
            let shards = number("SHARDS", arg)?;
            let index = std::env::var("JOB_COMPLETION_INDEX").context(
                "SHARDS needs the shard's number in $JOB_COMPLETION_INDEX: pass \
                 --env JOB_COMPLETION_INDEX to the runner",
            )?;
            let index = number("JOB_COMPLETION_INDEX", &index)?;
            if index >= shards {
                bail!("shard {index} does not exist: there are {shards} shards, from 0");
            }
            Some((index, shards))
        }
    };
    {
        let mut state = ctx.state();
        if ctx_resumed && (state.limit, state.shard) != (limit, shard) {
            bail!(
                "the checkpoint counts primes below {}{}, not below {limit}{}: use another \
                 --job-id",
                state.limit,
                describe(state.shard),
                describe(shard)
            );
        }
        state.limit = limit;
        state.shard = shard;
    }
    let range = match shard {
        None => 0..limit,
        // u128: LIMIT * I does not overflow.
        Some((index, shards)) => {
            let bound = |i: u64| (u128::from(limit) * u128::from(i) / u128::from(shards)) as u64;
            bound(index)..bound(index + 1)
        }
    };
    for n in ctx.batch(range).save_every(Duration::from_secs(1)) {
        if is_prime(n?) {
            ctx.state().count += 1;
        }
    }
    println!(
        "primes below {limit}{}: {}",
        describe(shard),
        ctx.state().count
    );
    Ok(Outcome::Completed)
}

/// ` in shard I of N`, or nothing for the whole range.
fn describe(shard: Option<(u64, u64)>) -> String {
    match shard {
        None => String::new(),
        Some((index, shards)) => format!(" in shard {index} of {shards}"),
    }
}
